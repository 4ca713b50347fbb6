import Foundation
import Hummingbird
import HTTPTypes
import ImageIntake
import Logging
import Metrics
import NIOCore

/// `/video/submit`, `/video/status` and `/video/cancel`: the seed's API. Each route decodes its request,
/// calls its use case and encodes the answer; what happens to tasks is decided in the use cases.
struct VideoController: Sendable {
    let submitTask: SubmitTask
    let readTask: ReadTask
    let cancelTask: CancelTask
    let catalog: ModelCatalog
    let metrics: ServiceMetrics
    let configuration: ServiceConfiguration

    init(useCases: TaskUseCases, catalog: ModelCatalog, metrics: ServiceMetrics, configuration: ServiceConfiguration) {
        self.submitTask = useCases.submit
        self.readTask = useCases.read
        self.cancelTask = useCases.cancel
        self.catalog = catalog
        self.metrics = metrics
        self.configuration = configuration
    }

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("submit", use: submit)
        group.post("status", use: status)
        group.post("cancel", use: cancel)
    }

    @Sendable func submit(request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let owner = context.keyHash ?? ""
        do {
            try await submitTask.admit(owner: owner)
            let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
            let submission = try SubmitRequest.validate(body, modelIDs: catalog.models.map(\.id), defaultModel: catalog.defaultModel.id)
            let id = try await submitTask(submission, owner: owner, logger: context.logger)
            metrics.submitLatency.record(duration: ContinuousClock.now - started)
            return JSONBody.response(status: .accepted, value: ["requestId": id])
        } catch let failure as SubmitFailure {
            let error = Self.apiError(failure)
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        } catch let error as any HTTPResponseError {
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        }
    }

    static func apiError(_ failure: SubmitFailure) -> APIError {
        switch failure {
        case .rateLimited(let perMinute, let retryAfter):
            return .tooManyRequests("rate limit reached: at most \(perMinute) submits per minute per API key", retryAfter: retryAfter)
        case .queueFull(let queued):
            return .tooManyRequests("the queue is full (\(queued) tasks waiting); try again later", retryAfter: 30)
        case .modelNotServed(let model):
            return APIError(.internalServerError, "model \(model) is not served")
        case .unusableImage(let error):
            return APIError(.badRequest, error.reason)
        case .tooBigForDevice(let width, let height, let frames, let needed, let free):
            let gib = { (bytes: Int) in String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }
            return APIError(
                .internalServerError,
                "not enough GPU memory for \(width)x\(height) with \(frames) frames (needs about \(gib(needed)), \(gib(free)) free): lower the resolution (image_size) or num_frames"
            )
        }
    }

    @Sendable func status(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try await request.requestID(limit: configuration.maxBodyBytes)
        guard let view = try await readTask(id: id, owner: context.keyHash) else {
            throw APIError(.notFound, "task \(id) not found")
        }
        let task = view.task
        var body = StatusBody(status: task.status.rawValue)
        switch task.status {
        case .inQueue:
            body.queuePosition = view.queuePosition
        case .inProgress:
            body.progress = .init(step: task.progressStep ?? 0, totalSteps: task.progressTotal ?? task.parameters.inferSteps)
        case .succeed:
            if let result = task.result {
                let videos = task.videoExpired ? [] : [StatusBody.Video(url: "\(configuration.publicURL)/videos/\(result.videoName).mp4")]
                body.results = .init(
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
                if task.videoExpired { body.reason = "video expired" }
            }
        case .failed, .cancelled:
            body.reason = task.reason ?? task.status.rawValue.lowercased()
        }
        return JSONBody.response(status: .ok, value: body)
    }

    @Sendable func cancel(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try await request.requestID(limit: configuration.maxBodyBytes)
        var logger = context.logger
        logger[metadataKey: "requestId"] = "\(id)"
        switch try await cancelTask(id: id, owner: context.keyHash ?? "", logger: logger) {
        case .accepted:
            return JSONBody.response(status: .ok, value: ["status": "Succeed"])
        case .alreadyEnded(let status):
            let word = status == .succeed ? "succeeded" : "failed"
            throw APIError(.badRequest, "task \(id) already \(word) and cannot be cancelled")
        case .notFound:
            throw APIError(.notFound, "task \(id) not found")
        }
    }
}

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

    var status: String
    var reason: String?
    var queuePosition: Int?
    var progress: Progress?
    var results: Results?

    enum CodingKeys: String, CodingKey {
        case status, reason
        case queuePosition = "queue_position"
        case progress, results
    }
}
