import Foundation

/// The `/video/status` answer; optional parts appear only in the states that carry them.
struct StatusBody: Encodable {
    struct Progress: Encodable {
        var step: Int
        var totalSteps: Int
        enum CodingKeys: String, CodingKey {
            case step
            case totalSteps = "total_steps"
        }
    }

    struct Video: Encodable { var url: String }

    struct Timings: Encodable { var inference: Double }

    struct Results: Encodable {
        var videos: [Video]
        var timings: Timings
        var seed: Int
        var width: Int
        var height: Int
        var numFrames: Int
        var fps: Int
        /// What ran, which a speed preset may have changed from what was asked.
        var inferSteps: Int
        var guidanceScale: Double
        enum CodingKeys: String, CodingKey {
            case videos, timings, seed, width, height
            case numFrames = "num_frames"
            case fps
            case inferSteps = "infer_steps"
            case guidanceScale = "guidance_scale"
        }
    }

    /// Set where the body travels without its request (stream events, webhooks).
    var requestId: String?
    var status: String
    var reason: String?
    var queuePosition: Int?
    var progress: Progress?
    /// Seconds until the video is expected, while queued or running and once step times are known.
    var etaSeconds: Int?
    var results: Results?

    enum CodingKeys: String, CodingKey {
        case requestId, status, reason
        case queuePosition = "queue_position"
        case progress
        case etaSeconds = "eta_seconds"
        case results
    }

    init(view: TaskView, publicURL: String, includeRequestID: Bool = false) {
        let task = view.task
        requestId = includeRequestID ? task.id : nil
        status = task.status.rawValue
        switch task.status {
        case .inQueue:
            queuePosition = view.queuePosition
            etaSeconds = view.etaSeconds.map { Int($0.rounded(.up)) }
        case .inProgress:
            progress = .init(step: task.progressStep ?? 0, totalSteps: task.progressTotal ?? task.parameters.inferSteps)
            etaSeconds = view.etaSeconds.map { Int($0.rounded(.up)) }
        case .succeed:
            if let result = task.result {
                let videos = task.videoExpired ? [] : [Video(url: "\(publicURL)/videos/\(result.videoName).mp4")]
                results = .init(
                    videos: videos,
                    timings: .init(inference: (result.inferenceSeconds * 1000).rounded() / 1000),
                    seed: task.parameters.seed,
                    width: result.width,
                    height: result.height,
                    numFrames: result.numFrames,
                    fps: result.fps,
                    inferSteps: result.inferSteps ?? task.parameters.inferSteps,
                    guidanceScale: result.guidanceScale ?? task.parameters.guidanceScale
                )
                if task.videoExpired { reason = "video expired" }
            }
        case .failed, .cancelled:
            reason = task.reason ?? task.status.rawValue.lowercased()
        }
    }
}
