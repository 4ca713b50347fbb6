import Foundation

/// A task's status as clients see it: the `/video/status` answer, each status stream event's data and a
/// webhook's `data` are this one document. Optional parts appear only in the states that carry them.
package struct TaskStatusDocument: Encodable {
    package struct Progress: Encodable {
        package var step: Int
        package var totalSteps: Int
        package enum CodingKeys: String, CodingKey {
            case step
            case totalSteps = "total_steps"
        }

        package init(step: Int, totalSteps: Int) {
            self.step = step
            self.totalSteps = totalSteps
        }
    }

    package struct Video: Encodable { var url: String }

    package struct Timings: Encodable { var inference: Double }

    package struct Results: Encodable {
        /// The model that made it.
        package var model: String
        package var videos: [Video]
        package var timings: Timings
        package var seed: Int
        package var width: Int
        package var height: Int
        package var numFrames: Int
        package var fps: Int
        /// What ran, which a speed preset may have changed from what was asked.
        package var inferSteps: Int
        package var guidanceScale: Double
        /// The low-noise expert's guidance where the job gave one (a model with two experts).
        package var guidanceScale2: Double?
        /// The LoRAs it was made with; left out when none.
        package var loras: [TaskLoRA]?
        package enum CodingKeys: String, CodingKey {
            case model, videos, timings, seed, width, height
            case numFrames = "num_frames"
            case fps
            case inferSteps = "infer_steps"
            case guidanceScale = "guidance_scale"
            case guidanceScale2 = "guidance_scale_2"
            case loras
        }

        package init(
            model: String, videos: [Video], timings: Timings, seed: Int, width: Int, height: Int, numFrames: Int, fps: Int, inferSteps: Int,
            guidanceScale: Double
        ) {
            self.model = model
            self.videos = videos
            self.timings = timings
            self.seed = seed
            self.width = width
            self.height = height
            self.numFrames = numFrames
            self.fps = fps
            self.inferSteps = inferSteps
            self.guidanceScale = guidanceScale
        }
    }

    /// Set where the body travels without its request (stream events, webhooks).
    package var requestId: String?
    package var status: String
    package var reason: String?
    package var queuePosition: Int?
    package var progress: Progress?
    /// Seconds until the video is expected, while queued or running and once step times are known.
    package var etaSeconds: Int?
    package var results: Results?

    package enum CodingKeys: String, CodingKey {
        case requestId, status, reason
        case queuePosition = "queue_position"
        case progress
        case etaSeconds = "eta_seconds"
        case results
    }

    package init(view: TaskView, publicURL: String, includeRequestID: Bool = false) {
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
                    model: task.parameters.model,
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
                results?.loras = task.loras.isEmpty ? nil : task.loras
                results?.guidanceScale2 = task.parameters.guidanceScale2
                if task.videoExpired { reason = "video expired" }
            }
        case .failed, .cancelled:
            reason = task.reason ?? task.status.rawValue.lowercased()
        }
    }
}
