import Foundation
import ImageIntake
import Logging

/// Why a submit was not queued. The API answers each with its own status; none of them queued anything.
package enum SubmitFailure: Error, Sendable, Equatable {
    /// The key used up its submits; `retryAfter` seconds until the next one.
    case rateLimited(perMinute: Int, retryAfter: Int)
    case queueFull(queued: Int)
    case modelNotServed(String)
    case unusableImage(ImageIntakeError)
    /// The last frame (`last_image_url`, or the OpenAI-style API's second image) could not be used.
    case unusableLastImage(ImageIntakeError)
    /// The device cannot hold the job at all (known before it is queued).
    case tooBigForDevice(width: Int, height: Int, frames: Int, neededBytes: Int, freeBytes: Int)
    /// An API node with no worker node registered in the store knows no model to validate against.
    case noWorkerNode
    /// A model of the table that no live worker serves (another model's nodes may be up).
    case noWorkerForModel(String)
    /// The `Idempotency-Key` was used within the day for a different request.
    case idempotencyKeyReused
    /// The `Idempotency-Key` header is empty, too long or not printable ASCII.
    case invalidIdempotencyKey
    /// The webhook URL may not be called (scheme, host, a blocked address, a host that does not resolve).
    case unusableWebhook(OutboundRefusal)
    /// A LoRA of the catalog that this job cannot use (another model's, a rank above the limit, gone).
    case unusableLoRA(name: String, reason: String)
    /// A LoRA given by URL that was not stored: refused by the download, not a safetensors LoRA, or one
    /// this job cannot use.
    case unusableLoRAURL(url: String, failure: LoRAURLFailure)
    /// The job's LoRAs together are more than the worker's one adapter holds: their ranks add up past
    /// `I2V_LORA_MAX_RANK`. On a two-expert model the sum is each expert's (its own LoRAs and those for both).
    case loraRanksAboveLimit(total: Int, limit: Int, expert: LoRAExpert?)
    /// A job with LoRAs for a model that only groups of devices serve, which take none (`ServedModel.takesLoRAs`).
    case loRAsNotTaken(model: String)

    package static let noWorkerNodeReason = "no worker node has registered with the task queue yet: start an `i2v-server worker` on the same database"

    package static func loRAsNotTakenReason(_ model: String) -> String {
        "loras: the workers serving \(model) are groups of devices (I2V_DEVICES with +), which take no LoRAs"
    }

    package static func noWorkerForModelReason(_ model: String) -> String {
        "no live worker serves model \(model): start a worker node with I2V_MODEL=\(model) on the same queue, or ask for a model that is served (GET /models)"
    }
}

/// Takes a validated submit to a queued task: rate limit, queue cap, image intake, the device-memory
/// admission, the input file, the seed, and the enqueue. Every API that creates tasks goes through it.
package struct SubmitTask: Sendable {
    package struct Limits: Sendable {
        package var maxQueued: Int
        package var submitsPerMinute: Int
        /// How long a submit may take from taking its idempotency key to queuing its task (the image
        /// download is most of it); a reservation older than that belongs to a submit that died.
        package var idempotencyPatience: Duration = .seconds(90)
        /// The rank of the one adapter a worker holds a job's LoRAs in (`I2V_LORA_MAX_RANK`): the most the
        /// ranks of a job's LoRAs may add up to.
        package var maxLoRARank: Int = 128
    }

    /// How long an `Idempotency-Key` names its task.
    package static let idempotencyWindow: TimeInterval = 86_400

    /// The task a submit created, or the one an earlier submit with the same idempotency key created.
    package struct Submitted: Sendable, Equatable {
        package var id: String
        package var replayed: Bool
    }

    package let queue: any TaskQueue
    package let guards: any SubmitGuards
    package let media: MediaStore
    package let intake: ImageIntake
    package let models: ModelCatalogSource
    package let loras: any LoRACatalog
    /// Where LoRAs given by URL are stored; nil where `I2V_LORA_URLS` is off.
    package let loraURLs: (any LoRAURLStore)?
    package let queueChanged: DispatchSignal
    /// The free device memory and the cost per latent token, where the node can tell them.
    package let deviceMemory: @Sendable () async -> DeviceMemory?
    package let metrics: ServiceMetrics
    package let limits: Limits

    /// Charged before the body is even read, so a key over its rate costs the service little. The bucket is
    /// in the store, so a key has one rate however many API nodes it reaches.
    package func admit(owner: String) async throws {
        if let retryAfter = try await guards.takeSubmitToken(owner: owner, perMinute: limits.submitsPerMinute, now: Date()) {
            throw SubmitFailure.rateLimited(perMinute: limits.submitsPerMinute, retryAfter: retryAfter)
        }
    }

    /// What can be asked for now.
    package func servedModels() async throws -> ModelCatalog {
        guard let catalog = try await models.current() else { throw SubmitFailure.noWorkerNode }
        return catalog
    }

    /// The model ids a submit may name: what is served, and on an API node the rest of the model table too
    /// (a worker node for it may be started: 503 until then, not an unknown model).
    package func askableModelIDs(_ catalog: ModelCatalog) -> [String] {
        models.isFleet ? catalog.askableIDs : catalog.models.map(\.id)
    }

    /// Queues the task. With an idempotency key, the same key and request within a day give back the first
    /// submit's task, from any API node, even while that submit is still downloading its image: the key is
    /// reserved in the store before anything else happens, and a second submit waits for the first.
    package func callAsFunction(_ submission: Submission, owner: String, idempotencyKey: String? = nil, logger: Logger) async throws -> Submitted {
        guard let idempotencyKey else {
            return Submitted(id: try await queue(submission, id: RandomIdentifier.hex128(), owner: owner, logger: logger), replayed: false)
        }
        guard (1...255).contains(idempotencyKey.utf8.count), idempotencyKey.utf8.allSatisfy({ (0x21...0x7e).contains($0) }) else {
            throw SubmitFailure.invalidIdempotencyKey
        }
        let key = IdempotencyKey(owner: owner, key: idempotencyKey, requestHash: submission.fingerprint)
        while true {
            let id = RandomIdentifier.hex128()
            let now = Date()
            let reservation = try await guards.reserveIdempotencyKey(
                key, taskID: id, validAfter: now.addingTimeInterval(-Self.idempotencyWindow), now: now
            )
            switch reservation {
            case .reserved:
                do {
                    try await queue(submission, id: id, owner: owner, logger: logger)
                } catch {
                    try? await guards.releaseIdempotencyKey(key, taskID: id)
                    throw error
                }
                // Should this fail, a retry still finds the task itself.
                try? await guards.completeIdempotencyKey(key, taskID: id)
                return Submitted(id: id, replayed: false)
            case .taken(let first, let requestHash, let queued, let since):
                guard requestHash == key.requestHash else { throw SubmitFailure.idempotencyKeyReused }
                if queued { return Submitted(id: first, replayed: true) }
                if try await queue.task(id: first) != nil { return Submitted(id: first, replayed: true) }
                if now.timeIntervalSince(since) > limits.idempotencyPatience.seconds {
                    // The submit that took the key never queued nor gave it back: its node died meanwhile.
                    try await guards.releaseIdempotencyKey(key, taskID: first)
                    continue
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    @discardableResult
    private func queue(_ submission: Submission, id: String, owner: String, logger: Logger) async throws -> String {
        // Checked before the download so a full queue costs nothing; checked again atomically on insert.
        let queued = try await queue.counts().queued
        guard queued < limits.maxQueued else { throw SubmitFailure.queueFull(queued: queued) }
        guard let model = try await servedModels().model(id: submission.model) else {
            let known = models.isFleet && ModelCatalog.tableIDs.contains(submission.model.lowercased())
            throw known ? SubmitFailure.noWorkerForModel(submission.model.lowercased()) : SubmitFailure.modelNotServed(submission.model)
        }

        let loras = try await pinLoRAs(submission.loras, model: model, logger: logger)

        var logger = logger
        logger[metadataKey: "requestId"] = "\(id)"
        if let webhook = submission.webhook { try await refuseUnusableWebhook(webhook, logger: logger) }
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
        // The last frame is cover-cropped to the first one's size: the model conditions on both in one latent.
        var lastFrame: PreparedImage?
        if let last = submission.lastImage {
            let size = ImageSizeRequest.fixed(width: prepared.width, height: prepared.height)
            do {
                switch last {
                case .url(let url): lastFrame = try await intake.prepare(url: url, size: size, planner: planner, logger: logger)
                case .bytes(let bytes): lastFrame = try await intake.prepare(imageBytes: bytes, size: size, planner: planner, logger: logger)
                }
            } catch {
                metrics.recordImageFailure(cause: error.cause.label)
                logger.info("last frame refused", metadata: ["cause": "\(error.cause.label)", "reason": "\(error.reason)"])
                throw SubmitFailure.unusableLastImage(error)
            }
        }

        let inputKey = try media.writeInput(prepared.png, taskID: id)
        var lastInputKey: String?
        if let lastFrame {
            do {
                lastInputKey = try media.writeLastInput(lastFrame.png, taskID: id)
            } catch {
                media.removeInput(key: inputKey)
                throw error
            }
        }
        var seedGenerator = SystemRandomNumberGenerator()
        var task = TaskRecord(
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
                seed: submission.seed ?? Int.random(in: 0...2_147_483_647, using: &seedGenerator),
                guidanceScale2: submission.guidanceScale2
            ),
            inputKey: inputKey,
            intake: IntakeTimings(
                fetch: prepared.timings.fetch.seconds,
                decode: prepared.timings.decode.seconds,
                encode: prepared.timings.encode.seconds
            )
        )
        task.webhook = submission.webhook
        task.lastInputKey = lastInputKey
        task.loras = loras
        do {
            try await queue.enqueue(task, maxQueued: limits.maxQueued)
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

    /// Which of `names` the LoRA catalog has.
    package func knownLoRAs(_ names: [String]) async -> Set<String> {
        var known = Set<String>()
        for name in Set(names) {
            if await loras.entry(named: name) != nil { known.insert(name) }
        }
        return known
    }

    /// Whether LoRAs may be given by URL (`I2V_LORA_URLS`).
    package var acceptsLoRAURLs: Bool { loraURLs != nil }

    /// The LoRAs as the catalog has them now, each checked against the model and the rank limit from its
    /// header, so a job the worker would refuse is refused before it waits in the queue. A LoRA given by URL
    /// is downloaded into the catalog first (before the image: a refused LoRA costs no image download), and
    /// then pinned like any other.
    private func pinLoRAs(_ choices: [LoRAChoice], model: ServedModel, logger: Logger) async throws(SubmitFailure) -> [TaskLoRA] {
        // Refused before any LoRA URL is downloaded: a group would claim the task and fail it.
        if !choices.isEmpty, !model.takesLoRAs { throw .loRAsNotTaken(model: model.id) }
        var pinned: [TaskLoRA] = []
        // Per expert: a two-expert model holds an adapter of the limit's rank in each of its transformers.
        var ranks: [LoRAExpert: Int] = [:]
        for choice in choices {
            let label: String
            switch choice.source {
            case .catalog(let name): label = name
            case .url(let url): label = url
            }
            // The API layer refuses these; a submission built otherwise is refused too.
            if choice.expert != nil, model.experts < 2 {
                throw .unusableLoRA(name: label, reason: "names an expert, but \(model.id) has one transformer")
            }
            let applies = model.experts < 2 ? [LoRAExpert.highNoise] : LoRAExpert.covered(by: choice.expert)
            let entry: LoRAEntry
            switch choice.source {
            case .catalog(let name):
                guard let found = await loras.entry(named: name) else {
                    throw .unusableLoRA(name: name, reason: "is not in the LoRA catalog (GET /loras lists it)")
                }
                if let problem = problem(with: found, model: model.id) { throw .unusableLoRA(name: name, reason: problem) }
                entry = found
            case .url(let url):
                guard let loraURLs else {
                    throw .unusableLoRAURL(url: url, failure: LoRAURLFailure(.download, "LoRAs by URL are off on this server (I2V_LORA_URLS)"))
                }
                let maxRank = limits.maxLoRARank
                let before = applies.map { ranks[$0, default: 0] }.max() ?? 0
                let modelID = model.id
                // Vetted before it is stored: a file this job cannot use is not kept.
                let vet: @Sendable (LoRAEntry) -> String? = { entry in
                    if let problem = Self.problem(with: entry, model: modelID, maxRank: maxRank) { return problem }
                    guard before + entry.rank <= maxRank else {
                        return
                            "has rank \(entry.rank), which brings the job's LoRA ranks to \(before + entry.rank), above the limit of \(maxRank) (I2V_LORA_MAX_RANK)"
                    }
                    return nil
                }
                do {
                    entry = try await loraURLs.store(url: url, vet: vet, logger: logger)
                } catch {
                    logger.info("LoRA URL refused", metadata: ["url": "\(url)", "cause": "\(error.cause.rawValue)", "reason": "\(error.reason)"])
                    throw .unusableLoRAURL(url: url, failure: error)
                }
            }
            // The same file under two names, or by a name and a URL: one transformer cannot take it twice.
            if let twin = pinned.first(where: { $0.sha256 == entry.sha256 && LoRAExpert.overlap($0.expert, choice.expert) }) {
                let same = twin.name == entry.name ? "is given twice" : "is the same file as LoRA \(twin.name)"
                throw .unusableLoRA(
                    name: label, reason: "\(same); give each LoRA once (or once per expert, as high_noise and low_noise)")
            }
            for expert in applies { ranks[expert, default: 0] += entry.rank }
            pinned.append(TaskLoRA(name: entry.name, scale: choice.scale, sha256: entry.sha256, expert: choice.expert))
        }
        // The worker holds a job's LoRAs together in one adapter of the limit's rank, one per transformer.
        for expert in LoRAExpert.allCases {
            guard let total = ranks[expert], total > limits.maxLoRARank else { continue }
            throw .loraRanksAboveLimit(total: total, limit: limits.maxLoRARank, expert: model.experts < 2 ? nil : expert)
        }
        return pinned
    }

    private func problem(with entry: LoRAEntry, model: String) -> String? {
        Self.problem(with: entry, model: model, maxRank: limits.maxLoRARank)
    }

    /// Why a job of `model` cannot use the LoRA, from what its header says; nil when it can.
    private static func problem(with entry: LoRAEntry, model: String, maxRank: Int) -> String? {
        guard entry.fits(model: model) else {
            // Only a LoRA whose width is known can fail to fit.
            let width = entry.innerDimension.map { "\($0)" } ?? "?"
            let fits = entry.models.isEmpty ? "" : ", made for \(entry.models.joined(separator: ", "))"
            return "does not fit \(model): its layers are \(width) wide\(fits)"
        }
        guard entry.rank <= maxRank else {
            return "has rank \(entry.rank), above the limit of \(maxRank) (I2V_LORA_MAX_RANK)"
        }
        return nil
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

    package init(
        queue: any TaskQueue, guards: any SubmitGuards, media: MediaStore, intake: ImageIntake, models: ModelCatalogSource,
        loras: any LoRACatalog = EmptyLoRACatalog(), loraURLs: (any LoRAURLStore)? = nil, queueChanged: DispatchSignal,
        deviceMemory: @escaping @Sendable () async -> DeviceMemory?,
        metrics: ServiceMetrics, limits: Limits
    ) {
        self.queue = queue
        self.guards = guards
        self.media = media
        self.intake = intake
        self.models = models
        self.loras = loras
        self.loraURLs = loraURLs
        self.queueChanged = queueChanged
        self.deviceMemory = deviceMemory
        self.metrics = metrics
        self.limits = limits
    }
}
