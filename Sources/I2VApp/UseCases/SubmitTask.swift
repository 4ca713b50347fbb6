import Foundation
import ImageIntake
import Logging

/// Why a submit was not queued. The API answers each with its own status; none of them queued anything.
enum SubmitFailure: Error, Sendable, Equatable {
    /// The key used up its submits; `retryAfter` seconds until the next one.
    case rateLimited(perMinute: Int, retryAfter: Int)
    case queueFull(queued: Int)
    case modelNotServed(String)
    case unusableImage(ImageIntakeError)
    /// The device cannot hold the job at all (known before it is queued).
    case tooBigForDevice(width: Int, height: Int, frames: Int, neededBytes: Int, freeBytes: Int)
}

/// Takes a validated submit to a queued task: rate limit, queue cap, image intake, the device-memory
/// admission, the input file, the seed, and the enqueue. Every API that creates tasks goes through it.
struct SubmitTask: Sendable {
    struct Limits: Sendable {
        var maxQueued: Int
        var submitsPerMinute: Int
    }

    let store: any TaskStore
    let media: MediaStore
    let intake: ImageIntake
    let catalog: ModelCatalog
    let queueChanged: DispatchSignal
    /// The free device memory and the cost per latent token, where the node can tell them.
    let deviceMemory: @Sendable () async -> DeviceMemory?
    let metrics: ServiceMetrics
    let limits: Limits

    /// Charged before the body is even read, so a key over its rate costs the service little. The bucket is
    /// in the store, so a key has one rate however many API nodes it reaches.
    func admit(owner: String) async throws {
        if let retryAfter = try await store.takeSubmitToken(owner: owner, perMinute: limits.submitsPerMinute, now: Date()) {
            throw SubmitFailure.rateLimited(perMinute: limits.submitsPerMinute, retryAfter: retryAfter)
        }
    }

    /// Queues the task and returns its id.
    func callAsFunction(_ submission: Submission, owner: String, logger: Logger) async throws -> String {
        // Checked before the download so a full queue costs nothing; checked again atomically on insert.
        let queued = try await store.counts().queued
        guard queued < limits.maxQueued else { throw SubmitFailure.queueFull(queued: queued) }
        guard let model = catalog.model(id: submission.model) else { throw SubmitFailure.modelNotServed(submission.model) }

        let id = RandomIdentifier.hex128()
        var logger = logger
        logger[metadataKey: "requestId"] = "\(id)"
        let planner = ResolutionPlanner(nativeArea: model.nativeArea, sizeMultiple: model.sizeMultiple)
        let prepared: PreparedImage
        do {
            switch submission.image {
            case .url(let url):
                prepared = try await intake.prepare(url: url, size: submission.imageSize, planner: planner, logger: logger)
            case .bytes(let bytes):
                prepared = try await intake.prepare(imageBytes: bytes, size: submission.imageSize, planner: planner, logger: logger)
            }
        } catch {
            metrics.recordImageFailure(cause: error.cause.label)
            logger.info("image refused", metadata: ["cause": "\(error.cause.label)", "reason": "\(error.reason)"])
            throw SubmitFailure.unusableImage(error)
        }
        metrics.recordIntake(
            fetch: prepared.timings.fetch.seconds,
            decode: prepared.timings.decode.seconds,
            png: prepared.timings.encode.seconds
        )
        let frames = submission.effectiveFrames
        try await refuseWhenTooBigForDevice(width: prepared.width, height: prepared.height, frames: frames)

        let inputKey = try media.writeInput(prepared.png, taskID: id)
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
            inputKey: inputKey,
            intake: IntakeTimings(
                fetch: prepared.timings.fetch.seconds,
                decode: prepared.timings.decode.seconds,
                encode: prepared.timings.encode.seconds
            )
        )
        do {
            try await store.enqueue(task, maxQueued: limits.maxQueued)
        } catch let error as QueueFullError {
            media.removeInput(key: inputKey)
            throw SubmitFailure.queueFull(queued: error.queued)
        } catch {
            media.removeInput(key: inputKey)
            throw error
        }
        queueChanged.wake()
        logger.info(
            "task queued",
            metadata: [
                "size": "\(prepared.width)x\(prepared.height)", "source": "\(prepared.sourceWidth)x\(prepared.sourceHeight)",
                "frames": "\(frames)", "steps": "\(submission.inferSteps)",
                "fetch_ms": "\(Int(task.intake.fetch * 1000))", "decode_ms": "\(Int(task.intake.decode * 1000))",
                "png_ms": "\(Int(task.intake.encode * 1000))",
            ]
        )
        return id
    }

    /// Where the node can tell in advance that a job cannot fit in device memory, it is refused with the
    /// hint an out-of-memory failure gives, instead of being queued to fail.
    private func refuseWhenTooBigForDevice(width: Int, height: Int, frames: Int) async throws(SubmitFailure) {
        guard let memory = await deviceMemory(), let free = memory.freeBytes, let perToken = memory.bytesPerToken else { return }
        let tokens = (width / 16) * (height / 16) * ((frames - 1) / 4 + 1)
        let needed = tokens * perToken
        guard needed > free else { return }
        throw .tooBigForDevice(width: width, height: height, frames: frames, neededBytes: needed, freeBytes: free)
    }
}
