import Foundation

/// The two names of one task: `video_<hex>` on `/v1`, where `<hex>` is its `requestId` on the seed's API.
enum VideoID {
    static let prefix = "video_"

    static func name(taskID: String) -> String { prefix + taskID }

    /// The task id inside a video id; nil for anything that cannot name a task.
    static func taskID(_ videoID: String) -> String? {
        guard videoID.hasPrefix(prefix) else { return nil }
        let hex = videoID.dropFirst(prefix.count)
        return RandomIdentifier.isHex128(hex) ? String(hex) : nil
    }
}

/// OpenAI's Video object for one task, with this service's extensions (`seed`, `num_frames`,
/// `queue_position`).
struct VideoObject: Encodable, Sendable, Equatable {
    struct Failure: Encodable, Sendable, Equatable {
        var code: String
        var message: String
    }

    var id: String
    var model: String
    var status: String
    var progress: Int
    var createdAt: Int
    var completedAt: Int?
    var expiresAt: Int?
    var prompt: String
    var size: String
    var seconds: String
    var error: Failure?
    var seed: Int
    var numFrames: Int
    var queuePosition: Int?

    /// - Parameters:
    ///   - fps: the served model's frame rate, for tasks that have no result yet.
    ///   - videoTTL: how long a finished video is kept.
    init(task: TaskRecord, queuePosition: Int?, fps: Int, videoTTL: Duration) {
        id = VideoID.name(taskID: task.id)
        model = task.parameters.model
        prompt = task.parameters.prompt
        seed = task.parameters.seed
        createdAt = Int(task.createdAt.timeIntervalSince1970)
        let frames = task.result?.numFrames ?? task.parameters.numFrames
        let rate = task.result?.fps ?? fps
        numFrames = frames
        size = "\(task.result?.width ?? task.parameters.width)x\(task.result?.height ?? task.parameters.height)"
        seconds = String(format: "%.2f", Double(frames) / Double(max(1, rate)))
        completedAt = task.status.isTerminal ? task.finishedAt.map { Int($0.timeIntervalSince1970) } : nil
        self.queuePosition = nil
        status = Self.status(task.status)
        switch task.status {
        case .inQueue:
            progress = 0
            self.queuePosition = queuePosition
        case .inProgress:
            let total = max(1, task.progressTotal ?? task.parameters.inferSteps)
            // 100 is kept for the finished video: the last step is followed by decoding and encoding.
            progress = min(99, max(0, (task.progressStep ?? 0) * 100 / total))
        case .succeed:
            progress = 100
            expiresAt = task.finishedAt.map { Int($0.timeIntervalSince1970 + videoTTL.seconds) }
        case .failed:
            progress = 0
            error = Failure(code: "generation_failed", message: task.reason ?? "failed")
        case .cancelled:
            progress = 0
            error = Failure(code: "cancelled", message: task.reason ?? "cancelled")
        }
    }

    /// OpenAI has no cancelled state: a cancelled task is `failed`, with `error.code` "cancelled".
    static func status(_ status: TaskStatus) -> String {
        switch status {
        case .inQueue: "queued"
        case .inProgress: "in_progress"
        case .succeed: "completed"
        case .failed, .cancelled: "failed"
        }
    }

    enum CodingKeys: String, CodingKey {
        case id, object, model, status, progress
        case createdAt = "created_at"
        case completedAt = "completed_at"
        case expiresAt = "expires_at"
        case prompt, size, seconds, error, seed
        case numFrames = "num_frames"
        case queuePosition = "queue_position"
    }

    // Absent values are null, as OpenAI sends them, so every key is always there.
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode("video", forKey: .object)
        try container.encode(model, forKey: .model)
        try container.encode(status, forKey: .status)
        try container.encode(progress, forKey: .progress)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(completedAt, forKey: .completedAt)
        try container.encode(expiresAt, forKey: .expiresAt)
        try container.encode(prompt, forKey: .prompt)
        try container.encode(size, forKey: .size)
        try container.encode(seconds, forKey: .seconds)
        try container.encode(error, forKey: .error)
        try container.encode(seed, forKey: .seed)
        try container.encode(numFrames, forKey: .numFrames)
        try container.encode(queuePosition, forKey: .queuePosition)
    }
}

/// `GET /v1/videos`: a page of the key's videos, with OpenAI's cursor fields.
struct VideoList: Encodable, Sendable {
    var data: [VideoObject]
    var hasMore: Bool

    enum CodingKeys: String, CodingKey {
        case object, data
        case firstID = "first_id"
        case lastID = "last_id"
        case hasMore = "has_more"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("list", forKey: .object)
        try container.encode(data, forKey: .data)
        try container.encode(data.first?.id, forKey: .firstID)
        try container.encode(data.last?.id, forKey: .lastID)
        try container.encode(hasMore, forKey: .hasMore)
    }
}

/// `DELETE /v1/videos/{video_id}`.
struct VideoDeleted: Encodable, Sendable {
    var id: String
    var object = "video.deleted"
    var deleted = true
}
