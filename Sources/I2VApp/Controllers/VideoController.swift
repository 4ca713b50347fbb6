import Foundation
import Hummingbird
import HTTPTypes
import ImageIntake
import Logging
import Metrics
import NIOCore

/// `/video/submit`, `/video/status` and `/video/cancel`.
struct VideoController: Sendable {
    let store: any TaskStore
    let scheduler: TaskScheduler
    let signal: SchedulerSignal
    let worker: any InferenceWorker
    let intake: ImageIntake
    let catalog: ModelCatalog
    let rateLimiter: SubmitRateLimiter
    let metrics: ServiceMetrics
    let configuration: ServiceConfiguration

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("submit", use: submit)
        group.post("status", use: status)
        group.post("cancel", use: cancel)
    }

    @Sendable func submit(request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let owner = context.keyHash ?? ""
        do {
            let response = try await accept(request: request, context: context, owner: owner)
            metrics.submitLatency.record(duration: ContinuousClock.now - started)
            return response
        } catch let error as any HTTPResponseError {
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        }
    }

    private func accept(request: Request, context: AppRequestContext, owner: String) async throws -> Response {
        if let retryAfter = await rateLimiter.take(for: owner) {
            throw APIError.tooManyRequests("rate limit reached: at most \(configuration.submitsPerMinute) submits per minute per API key", retryAfter: retryAfter)
        }
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        let submission = try SubmitRequest.validate(body, modelIDs: catalog.models.map(\.id), defaultModel: catalog.defaultModel.id)
        // Checked before the download so a full queue costs nothing; checked again atomically on insert.
        try await refuseWhenQueueFull(queued: store.counts().queued)

        let id = RandomIdentifier.hex128()
        var logger = context.logger
        logger[metadataKey: "requestId"] = "\(id)"
        guard let model = catalog.model(id: submission.model) else {
            throw APIError(.internalServerError, "model \(submission.model) is not served")
        }
        let planner = ResolutionPlanner(nativeArea: model.nativeArea, sizeMultiple: model.sizeMultiple)
        let prepared: PreparedImage
        do {
            prepared = try await intake.prepare(url: submission.imageURL, size: submission.imageSize, planner: planner, logger: logger)
        } catch {
            metrics.recordImageFailure(cause: error.cause.label)
            logger.info("image refused", metadata: ["cause": "\(error.cause.label)", "reason": "\(error.reason)"])
            throw APIError(.badRequest, error.reason)
        }
        let frames = submission.effectiveFrames
        try await refuseWhenTooBigForDevice(width: prepared.width, height: prepared.height, frames: frames)

        let inputPath = configuration.inputsDirectory.appending(path: "\(id).png")
        try writeAtomically(prepared.png, to: inputPath)
        var seedGenerator = SystemRandomNumberGenerator()
        let task = TaskRecord(
            id: id,
            ownerKeyHash: owner,
            parameters: TaskParameters(
                model: model.id,
                prompt: submission.prompt,
                negativePrompt: submission.negativePrompt,
                width: prepared.width,
                height: prepared.height,
                numFrames: frames,
                guidanceScale: submission.guidanceScale,
                inferSteps: submission.inferSteps,
                seed: submission.seed ?? Int.random(in: 0...2_147_483_647, using: &seedGenerator)
            ),
            inputPath: inputPath.path,
            intake: IntakeTimings(
                fetch: prepared.timings.fetch.seconds,
                decode: prepared.timings.decode.seconds,
                encode: prepared.timings.encode.seconds
            )
        )
        do {
            try await store.enqueue(task, maxQueued: configuration.maxQueued)
        } catch let error as QueueFullError {
            try? FileManager.default.removeItem(at: inputPath)
            throw queueFull(queued: error.queued)
        }
        signal.wake()
        logger.info(
            "task queued",
            metadata: [
                "size": "\(prepared.width)x\(prepared.height)", "source": "\(prepared.sourceWidth)x\(prepared.sourceHeight)",
                "frames": "\(frames)", "steps": "\(submission.inferSteps)",
                "fetch_ms": "\(Int(task.intake.fetch * 1000))", "decode_ms": "\(Int(task.intake.decode * 1000))",
                "png_ms": "\(Int(task.intake.encode * 1000))",
            ]
        )
        return JSONBody.response(status: .accepted, value: ["requestId": id])
    }

    private func refuseWhenQueueFull(queued: Int) throws {
        guard queued >= configuration.maxQueued else { return }
        throw queueFull(queued: queued)
    }

    private func queueFull(queued: Int) -> APIError {
        APIError.tooManyRequests("the queue is full (\(queued) tasks waiting); try again later", retryAfter: 30)
    }

    /// Where the worker can tell in advance that a job cannot fit in device memory, refuse it with
    /// the same hint an out-of-memory failure gives, instead of queueing a job bound to fail.
    private func refuseWhenTooBigForDevice(width: Int, height: Int, frames: Int) async throws {
        guard let memory = await worker.readiness()?.memory, let free = memory.freeBytes, let perToken = memory.bytesPerToken else { return }
        let tokens = (width / 16) * (height / 16) * ((frames - 1) / 4 + 1)
        let needed = tokens * perToken
        guard needed > free else { return }
        let gib = { (bytes: Int) in String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }
        throw APIError(
            .internalServerError,
            "not enough GPU memory for \(width)x\(height) with \(frames) frames (needs about \(gib(needed)), \(gib(free)) free): lower the resolution (image_size) or num_frames"
        )
    }

    @Sendable func status(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try await request.requestID(limit: configuration.maxBodyBytes)
        guard let task = try await store.task(id: id), task.ownerKeyHash == context.keyHash else {
            throw APIError(.notFound, "task \(id) not found")
        }
        var body = StatusBody(status: task.status.rawValue)
        switch task.status {
        case .inQueue:
            body.queuePosition = try await store.queuePosition(id: id)
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
                    fps: result.fps
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
        switch try await store.cancel(id: id, ownerKeyHash: context.keyHash ?? "") {
        case .cancelledQueued:
            logger.info("queued task cancelled")
            metrics.recordOutcome(.cancelled)
            try? FileManager.default.removeItem(at: configuration.inputsDirectory.appending(path: "\(id).png"))
            signal.wake()
        case .cancelRequested:
            logger.info("cancel requested for running task")
            await scheduler.cancelRunning(taskID: id)
        case .alreadyCancelled:
            break
        case .alreadyFinished(let status):
            let word = status == .succeed ? "succeeded" : "failed"
            throw APIError(.badRequest, "task \(id) already \(word) and cannot be cancelled")
        case .notFound:
            throw APIError(.notFound, "task \(id) not found")
        }
        return JSONBody.response(status: .ok, value: ["status": "Succeed"])
    }

    private func writeAtomically(_ bytes: [UInt8], to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url, options: .atomic)
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
        enum CodingKeys: String, CodingKey {
            case videos, timings, seed, width, height
            case numFrames = "num_frames"
            case fps
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
