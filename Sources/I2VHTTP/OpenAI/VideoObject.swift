import Foundation
import I2VCore
import I2VGPUNode

/// The two names of one task: `video_<hex>` on `/v1`, where `<hex>` is its `requestId` on the seed's API.
package enum VideoID {
    package static let prefix = "video_"

    package static func name(taskID: String) -> String { prefix + taskID }

    /// The task id inside a video id; nil for anything that cannot name a task.
    package static func taskID(_ videoID: String) -> String? {
        guard videoID.hasPrefix(prefix) else { return nil }
        let hex = videoID.dropFirst(prefix.count)
        return RandomIdentifier.isHex128(hex) ? String(hex) : nil
    }
}

/// OpenAI's Video object for one task, with this service's extensions (`seed`, `num_frames`,
/// `queue_position`).
package struct VideoObject: Encodable, Sendable, Equatable {
    package struct Failure: Encodable, Sendable, Equatable {
        package var code: String
        package var message: String

        package init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }

    package var id: String
    package var model: String
    package var status: String
    package var progress: Int
    package var createdAt: Int
    package var completedAt: Int?
    package var expiresAt: Int?
    package var prompt: String
    package var size: String
    package var seconds: String
    package var error: Failure?
    package var seed: Int
    package var numFrames: Int
    package var queuePosition: Int?
    /// The LoRAs it runs with (this service's extension); left out when none.
    package var loras: [TaskLoRA]?

    /// - Parameters:
    ///   - fps: the served model's frame rate, for tasks that have no result yet.
    ///   - videoTTL: how long a finished video is kept.
    package init(task: TaskRecord, queuePosition: Int?, fps: Int, videoTTL: Duration) {
        id = VideoID.name(taskID: task.id)
        model = task.parameters.model
        prompt = task.parameters.prompt
        seed = task.parameters.seed
        createdAt = Int(task.createdAt.timeIntervalSince1970)
        let frames = task.result?.numFrames ?? task.parameters.numFrames
        let rate = task.result?.fps ?? fps
        numFrames = frames
        loras = task.loras.isEmpty ? nil : task.loras
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
    package static func status(_ status: TaskStatus) -> String {
        switch status {
        case .inQueue: "queued"
        case .inProgress: "in_progress"
        case .succeed: "completed"
        case .failed, .cancelled: "failed"
        }
    }

    package enum CodingKeys: String, CodingKey {
        case id, object, model, status, progress
        case createdAt = "created_at"
        case completedAt = "completed_at"
        case expiresAt = "expires_at"
        case prompt, size, seconds, error, seed
        case numFrames = "num_frames"
        case queuePosition = "queue_position"
        case loras
    }

    // Absent values are null, as OpenAI sends them, so every key is always there.
    package func encode(to encoder: any Encoder) throws {
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
        try container.encodeIfPresent(loras, forKey: .loras)
    }
}

/// `GET /v1/videos`: a page of the key's videos, with OpenAI's cursor fields.
package struct VideoList: Encodable, Sendable {
    package var data: [VideoObject]
    package var hasMore: Bool

    package enum CodingKeys: String, CodingKey {
        case object, data
        case firstID = "first_id"
        case lastID = "last_id"
        case hasMore = "has_more"
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("list", forKey: .object)
        try container.encode(data, forKey: .data)
        try container.encode(data.first?.id, forKey: .firstID)
        try container.encode(data.last?.id, forKey: .lastID)
        try container.encode(hasMore, forKey: .hasMore)
    }

    package init(data: [VideoObject], hasMore: Bool) {
        self.data = data
        self.hasMore = hasMore
    }
}

/// `DELETE /v1/videos/{video_id}`.
package struct VideoDeleted: Encodable, Sendable {
    package var id: String
    package var object = "video.deleted"
    package var deleted = true

    package init(id: String) {
        self.id = id
    }
}
