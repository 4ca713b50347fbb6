import CoreMetrics
import Foundation
import I2VCore
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// The GPU node's dispatcher: moves tasks from the store's queue to the pool's workers, FIFO, each to the least
/// busy ready worker and never more than the pool's capacity at once, and records how each one ends. Everything
/// it knows is in the store, so a restart picks up where it left off.
///
/// It claims each task under the node's name with a lease and renews the leases of its running tasks on a
/// heartbeat. A task whose lease it finds it no longer holds (the node was cut off from the database for
/// longer than the lease, and another node has taken the task) is stopped here without recording anything.
public actor Dispatcher: Service {
    public struct Configuration: Sendable {
        /// The node's name in the store; stable across restarts, so a restart can take back its own tasks.
        public var node: String
        public var lease: Duration
        public var maxAttempts: Int
        public var cancelGrace: Duration
        public var shutdownGrace: Duration
        /// How often the queue is read without a wake-up; wake-ups (in-process, or the store's
        /// notifications across nodes) make it a fallback, so a lost one only delays.
        public var pollInterval: Duration
        /// The models this node's workers serve now: it claims only their tasks (nil: any task).
        public var models: @Sendable () async -> [String]?
        /// How long a busy worker's free slots keep to the LoRA set it runs before they take the oldest task
        /// of any set again (`WorkerPool.claimSet`): the longest another set waits for a busy worker.
        public var loraSetHold: Duration
        /// Whether another live node takes LoRAs for this node's models: a node of groups alone then leaves LoRA
        /// tasks to it (`WorkerPool.claimSet`) instead of claiming and failing them.
        public var loRAsTakenElsewhere: @Sendable () async -> Bool = { false }

        public init(
            node: String,
            lease: Duration,
            maxAttempts: Int,
            cancelGrace: Duration,
            shutdownGrace: Duration,
            pollInterval: Duration = .seconds(1),
            models: @escaping @Sendable () async -> [String]? = { nil },
            loraSetHold: Duration = .seconds(60)
        ) {
            self.node = node
            self.lease = lease
            self.maxAttempts = maxAttempts
            self.cancelGrace = cancelGrace
            self.shutdownGrace = shutdownGrace
            self.pollInterval = pollInterval
            self.models = models
            self.loraSetHold = loraSetHold
        }

        /// Renewed three times a lease, so one late or failed heartbeat never lets a lease run out.
        package var heartbeat: Duration { lease / 3 }
    }

    private struct RunningJob {
        var cancels: AsyncStream<Void>.Continuation
        var stoppingForShutdown = false
        /// The client's cancel was read from the store and passed to the job.
        var cancelForwarded = false
        /// Another node holds the task now: the job is stopped and its end is not recorded.
        var leaseLost = false
        /// Recorded as cancelled before its worker stopped it (see `abandon`): whatever it ends with is discarded.
        var abandoned = false
    }

    private let store: any TaskQueue
    private let media: MediaStore
    private let loras: any LoRACatalog
    private let pool: WorkerPool
    private let signal: DispatchSignal
    private let configuration: Configuration
    private let metrics: ServiceMetrics
    private let logger: Logger
    private var running: [String: RunningJob] = [:]
    private var accepting = true

    public init(
        store: any TaskQueue,
        media: MediaStore,
        loras: any LoRACatalog = EmptyLoRACatalog(),
        pool: WorkerPool,
        signal: DispatchSignal,
        configuration: Configuration,
        metrics: ServiceMetrics,
        logger: Logger
    ) {
        self.store = store
        self.media = media
        self.loras = loras
        self.pool = pool
        self.signal = signal
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        // The database may be away at start too: wait for it rather than stop the node (a service that ends
        // ends the whole service group).
        var recovered: [String: RequeueOutcome] = [:]
        while true {
            do {
                recovered = try await store.recoverInterrupted(node: configuration.node, maxAttempts: configuration.maxAttempts)
                storeProblem(nil)
                break
            } catch {
                storeProblem(error)
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
            }
        }
        for (id, outcome) in recovered.sorted(by: { $0.key < $1.key }) {
            logger.warning("task was running when the service stopped", metadata: ["requestId": "\(id)", "outcome": "\(outcome)"])
            switch outcome {
            case .failed: metrics.recordOutcome(.failed)
            case .cancelled: metrics.recordOutcome(.cancelled)
            case .requeued, .notRunning: break
            }
        }
        await updateGauges()

        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                // A slow tick as well as the wake-ups, so a missed wake-up can delay work but never strand it.
                let signal = self.signal
                let poll = self.configuration.pollInterval
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: poll)
                        signal.wake()
                    }
                }
                let heartbeat = self.configuration.heartbeat
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: heartbeat)
                        await self.renewLeases()
                    }
                }
                for await _ in self.signal.wakeups() {
                    guard self.accepting else { break }
                    await self.forwardCancels()
                    await self.dispatch(into: &group)
                }
                await self.drain()
                // Jobs still following a worker that did not answer are abandoned here; drain() has
                // already put their tasks back in the queue.
                group.cancelAll()
            }
        } onGracefulShutdown: {
            Task { await self.stopAccepting() }
        }
    }

    private func stopAccepting() {
        accepting = false
        signal.wake()
    }

    private func dispatch(into group: inout DiscardingTaskGroup) async {
        // The worker is chosen before the claim, so a task leaves the queue only when a worker has room for it.
        // A group's claim is narrowed to tasks without LoRAs; when it finds none, the group is passed over for
        // this round so that the node's other workers still claim the LoRA tasks it left. Any other empty
        // claim ends the round: the next wake-up starts again from the least busy worker, so a task queued
        // meanwhile still goes where the placement rule puts it.
        var passed: Set<Int> = []
        while accepting, let member = await pool.reserve(passing: passed) {
            let claimed: TaskRecord?
            let started = ContinuousClock.now
            // A worker's running jobs share its adapters: while it is busy, its free slots take its own set.
            // Asked of the store only where it decides something: a group on a node that has no plain worker.
            let groupsOnly = member.isGroup && pool.members.allSatisfy(\.isGroup)
            let elsewhere = groupsOnly ? await configuration.loRAsTakenElsewhere() : false
            let set = await pool.claimSet(for: member, hold: configuration.loraSetHold, loRAsElsewhere: elsewhere)
            do {
                claimed = try await store.claimNext(
                    node: configuration.node, lease: configuration.lease, models: await configuration.models(), loraSet: set
                )
                metrics.claimLatency.record(duration: ContinuousClock.now - started)
                storeProblem(nil)
            } catch {
                await pool.release(member)
                storeProblem(error)
                return
            }
            guard let task = claimed else {
                await pool.release(member)
                guard set != nil, member.isGroup else { break }
                passed.insert(member.index)
                continue
            }
            if running[task.id] != nil {
                // Ours already: taken back while this node could not reach the store, and claimed again
                // before its heartbeat could take it back. Its job never stopped; the claim just renewed
                // the lease, and a second job would only make the same video twice.
                await pool.release(member)
                logger.info("claimed a task this node is still running; its job goes on", metadata: ["requestId": "\(task.id)"])
                continue
            }
            metrics.queueWait.recordSeconds(max(0, Date().timeIntervalSince(task.createdAt)))
            await pool.assign(task.id, loraSet: TaskLoRA.setKey(task.loras), to: member)
            let (cancels, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            running[task.id] = RunningJob(cancels: continuation)
            group.addTask { await self.execute(task, on: member, cancels: cancels) }
        }
        await updateGauges()
    }

    /// While the database is away every tick fails the same way: say so once, and once when it is back.
    private var storeAway = false
    private func storeProblem(_ error: (any Error)?) {
        if let error, !storeAway {
            storeAway = true
            logger.error("the task store cannot be reached; running jobs continue and are recorded when it is back", metadata: ["error": "\(error)"])
        } else if error == nil, storeAway {
            storeAway = false
            logger.info("the task store is reachable again")
        }
    }

    /// The heartbeat: extends the leases of the running tasks, and stops the jobs of any task another node
    /// now holds (its lease ran out while this node could not reach the store).
    private func renewLeases() async {
        let ids = running.filter { !$0.value.leaseLost }.map(\.key)
        guard !ids.isEmpty else { return }
        let held: Set<String>
        do {
            held = try await store.renewLeases(node: configuration.node, ids: ids, lease: configuration.lease)
        } catch {
            storeProblem(error)
            return
        }
        // A task that ended between reading `running` and the renewal is simply gone from `running` now.
        for id in ids where !held.contains(id) && running[id] != nil {
            logger.warning("lost the lease on a running task; stopping it", metadata: ["requestId": "\(id)"])
            running[id]?.leaseLost = true
            running[id]?.cancels.yield()
        }
    }

    /// Clients cancel through the store; every wake-up (a cancel wakes the loop, and the slow tick is the
    /// fallback) asks it which of the running tasks are to stop.
    private func forwardCancels() async {
        let pending = running.filter { !$0.value.cancelForwarded }.map(\.key)
        guard !pending.isEmpty else { return }
        let requested: Set<String>
        do {
            requested = try await store.cancelRequested(among: pending)
        } catch {
            logger.error("could not read cancel requests", metadata: ["error": "\(error)"])
            return
        }
        for id in requested where running[id]?.cancelForwarded == false {
            running[id]?.cancelForwarded = true
            running[id]?.cancels.yield()
        }
    }

    /// Lets running jobs finish within the shutdown grace, then stops them and puts them back in the queue.
    private func drain() async {
        guard !running.isEmpty else { return }
        logger.info("waiting for running tasks before shutdown", metadata: ["running": "\(running.count)", "grace": "\(configuration.shutdownGrace)"])
        let deadline = ContinuousClock.now + configuration.shutdownGrace
        while !running.isEmpty && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        guard !running.isEmpty else { return }
        for id in running.keys {
            running[id]?.stoppingForShutdown = true
            running[id]?.cancels.yield()
        }
        let cancelDeadline = ContinuousClock.now + configuration.cancelGrace
        while !running.isEmpty && ContinuousClock.now < cancelDeadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for id in running.keys {
            _ = try? await store.requeue(
                id: id, node: configuration.node, maxAttempts: configuration.maxAttempts, reason: "service shutdown", countAttempt: false)
        }
    }

    private func execute(_ task: TaskRecord, on member: WorkerPool.Member, cancels: AsyncStream<Void>) async {
        var logger = self.logger
        logger[metadataKey: "requestId"] = "\(task.id)"
        logger[metadataKey: "worker"] = "\(member.index)"
        let videoName = RandomIdentifier.hex128()
        let outputPath = media.videoURL(name: videoName).path
        let p = task.parameters
        var job = WorkerJob(
            taskID: task.id,
            imagePath: media.inputURL(key: task.inputKey).path,
            prompt: p.prompt,
            negativePrompt: p.negativePrompt,
            width: p.width,
            height: p.height,
            numFrames: p.numFrames,
            inferSteps: p.inferSteps,
            guidanceScale: p.guidanceScale,
            seed: p.seed,
            outputPath: outputPath,
            lastImagePath: task.lastInputKey.map { media.inputURL(key: $0).path },
            guidanceScale2: p.guidanceScale2
        )
        logger.info(
            "task started", metadata: ["attempt": "\(task.attempts)", "size": "\(p.width)x\(p.height)", "frames": "\(p.numFrames)", "steps": "\(p.inferSteps)"])

        let end: JobEnd
        do throws(LoRAResolutionFailure) {
            // Found again now, not at submit: the nodes may mount the catalog in different places, and a file
            // replaced or removed while the task waited must not run under its old name.
            if !task.loras.isEmpty {
                var resolved: [WorkerLoRA] = []
                for lora in task.loras {
                    let entry = try await loras.resolve(lora)
                    resolved.append(WorkerLoRA(name: lora.name, path: entry.path, scale: lora.scale, sha256: lora.sha256, expert: lora.expert))
                }
                job.loras = resolved
            }
            do {
                let updates = try await member.worker.start(job)
                end = await follow(updates, task: task, member: member, cancels: cancels, logger: logger)
            } catch {
                end = .workerLost(reason: "\(error)", restartedByUs: true)
            }
        } catch {
            end = .failed(kind: .badInput, message: error.reason)
        }
        await record(end, task: task, videoName: videoName, logger: logger)
        running.removeValue(forKey: task.id)
        await pool.release(member, taskID: task.id)
        await updateGauges()
        signal.wake()
    }

    /// Follows one job's updates to its end, and turns a client's cancel into a cancel to the worker that
    /// holds the job, with a deadline per phase: the grace starts again whenever the job reports that it
    /// entered a new phase, since each phase heeds a cancel at its own checkpoints. A job that misses its
    /// deadline is stopped by restarting its worker only when it is that worker's only job; a worker that
    /// also runs another client's job is left alone, and the cancelled job is recorded as cancelled at
    /// once, its result discarded when it comes.
    private func follow(
        _ updates: AsyncStream<JobUpdate>,
        task: TaskRecord,
        member: WorkerPool.Member,
        cancels: AsyncStream<Void>,
        logger: Logger
    ) async -> JobEnd {
        let grace = configuration.cancelGrace
        let store = self.store
        let node = configuration.node
        let metrics = self.metrics
        let pool = self.pool
        let worker = member.worker
        let phases = PhaseWatch()
        // Progress is advisory: only the latest step is written, and never in the way of the job's end. While
        // the store is slow or away, writing every step in turn would hold the job's result back behind them.
        let (progress, progressInput) = AsyncStream.makeStream(of: (step: Int, total: Int).self, bufferingPolicy: .bufferingNewest(1))
        return await withTaskGroup(of: JobEnd?.self) { group in
            group.addTask {
                for await latest in progress {
                    try? await store.recordProgress(id: task.id, node: node, step: latest.step, total: latest.total)
                }
                return nil
            }
            group.addTask {
                for await _ in cancels {
                    logger.info("cancelling running task", metadata: ["phase": "\(phases.current ?? "unknown")"])
                    await worker.cancel(taskID: task.id)
                    var seen = phases.changes
                    while true {
                        try? await Task.sleep(for: grace)
                        if Task.isCancelled { return nil }
                        let now = phases.changes
                        if now == seen { break }
                        seen = now
                    }
                    let phase = phases.current ?? "unknown"
                    if await pool.tasks(of: member).contains(where: { $0 != task.id }) {
                        await self.abandon(task, phase: phase, logger: logger)
                        return nil
                    }
                    await worker.restart(reason: "task \(task.id) did not stop within \(grace) of its cancel (phase \(phase))")
                    return nil
                }
                return nil
            }
            group.addTask {
                var lastStep = ContinuousClock.now
                for await update in updates {
                    switch update {
                    case .progress(let step, let total):
                        let now = ContinuousClock.now
                        metrics.stepLatency.record(duration: now - lastStep)
                        lastStep = now
                        progressInput.yield((step, total))
                    case .phase(let phase):
                        phases.enter(phase)
                    case .finished(let end):
                        return end
                    }
                }
                return .workerLost(reason: "the inference worker stopped reporting", restartedByUs: false)
            }
            var result: JobEnd = .workerLost(reason: "no result", restartedByUs: false)
            for await end in group {
                if let end {
                    result = end
                    group.cancelAll()
                    break
                }
            }
            return result
        }
    }

    /// A cancelled job that outlived its grace on a worker that runs other jobs too: the task ends
    /// Cancelled now, for its client, while the job keeps its slot until the worker answers for it.
    private func abandon(_ task: TaskRecord, phase: String, logger: Logger) async {
        guard running[task.id] != nil else { return }
        running[task.id]?.abandoned = true
        logger.warning(
            "a cancelled task did not stop within the cancel grace; its worker runs other jobs, so it is not restarted and the task's result will be discarded",
            metadata: ["phase": "\(phase)", "grace": "\(configuration.cancelGrace)"]
        )
        do {
            if try await store.finish(id: task.id, node: configuration.node, outcome: .cancelled(reason: TaskStateMachine.cancelledByClient))
                != .notRunning
            {
                metrics.recordOutcome(.cancelled)
            }
        } catch {
            // The worker's own answer records it when it comes.
            running[task.id]?.abandoned = false
            logger.error("could not record the cancelled task's end", metadata: ["error": "\(error)"])
        }
    }

    /// Records how a job ended. While the store cannot be reached it keeps trying (the job's work is done
    /// and would be lost otherwise) until the node shuts down or the lease is found lost.
    private func record(_ end: JobEnd, task: TaskRecord, videoName: String, logger: Logger) async {
        if running[task.id]?.leaseLost == true {
            if case .done(let done) = end { removeFile(done.path) }
            logger.warning("the task's end is not recorded: another node holds it now")
            return
        }
        if running[task.id]?.abandoned == true {
            if case .done(let done) = end { removeFile(done.path) }
            media.removeInput(key: task.inputKey)
            logger.info("the cancelled task's job ended; what it made is discarded")
            return
        }
        var delay = Duration.milliseconds(250)
        while true {
            do {
                try await recordOnce(end, task: task, videoName: videoName, logger: logger)
                storeProblem(nil)
                return
            } catch is StoreUnavailable where accepting {
                storeProblem(StoreUnavailable(reason: "recording the end of \(task.id)"))
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            } catch {
                logger.error("could not record the task's end", metadata: ["error": "\(error)"])
                return
            }
        }
    }

    private func recordOnce(_ end: JobEnd, task: TaskRecord, videoName: String, logger: Logger) async throws {
        let node = configuration.node
        let stoppingForShutdown = running[task.id]?.stoppingForShutdown ?? false
        switch end {
        case .done(let done):
            let result = TaskResult(
                videoName: videoName,
                width: done.width,
                height: done.height,
                numFrames: done.numFrames,
                fps: done.fps,
                inferenceSeconds: done.inferenceSeconds,
                encodeSeconds: done.encodeSeconds ?? 0,
                inferSteps: done.inferSteps,
                guidanceScale: done.guidanceScale
            )
            switch try await store.finish(id: task.id, node: node, outcome: .succeeded(result)) {
            case .ended(.succeed):
                metrics.inferenceLatency.recordSeconds(done.inferenceSeconds)
                metrics.encodeLatency.recordSeconds(done.encodeSeconds ?? 0)
                metrics.recordOutcome(.succeed)
                logger.info("task succeeded", metadata: ["inference_seconds": "\(done.inferenceSeconds)", "video": "\(videoName).mp4"])
            case .ended(let status):
                // The client's cancel was acknowledged while the video was being decoded or encoded.
                removeFile(done.path)
                if status == .cancelled { metrics.recordOutcome(.cancelled) }
                logger.info("task cancelled after its last step; its video is discarded", metadata: ["status": "\(status.rawValue)"])
            case .notRunning:
                // Another node runs the task now (or it already ended): its attempt still needs the input.
                removeFile(done.path)
                logger.warning("a result arrived for a task that was no longer running; its video is discarded")
                return
            }
            media.removeInput(key: task.inputKey)
        case .failed(.cancelled, _) where stoppingForShutdown:
            _ = try await store.requeue(id: task.id, node: node, maxAttempts: configuration.maxAttempts, reason: "service shutdown", countAttempt: false)
            logger.info("task put back in the queue for the next start")
        case .failed(.cancelled, _):
            guard try await store.finish(id: task.id, node: node, outcome: .cancelled(reason: "cancelled by the client")) != .notRunning
            else { return }
            metrics.recordOutcome(.cancelled)
            logger.info("task cancelled while running")
            media.removeInput(key: task.inputKey)
        case .failed(let kind, let message):
            let reason =
                switch kind {
                case .oom:
                    message.lowercased().contains("out of memory") ? message : "out of memory: \(message); lower the resolution (image_size) or num_frames"
                case .badInput: "bad input: \(message)"
                default: "inference failed: \(message)"
                }
            guard try await store.finish(id: task.id, node: node, outcome: .failed(reason: reason)) != .notRunning else {
                logger.warning("a failure arrived for a task that was no longer running", metadata: ["reason": "\(reason)"])
                return
            }
            metrics.recordOutcome(.failed)
            logger.warning("task failed", metadata: ["kind": "\(kind.rawValue)", "reason": "\(reason)"])
            media.removeInput(key: task.inputKey)
        case .workerLost(let reason, let restartedByUs):
            let outcome = try await store.requeue(
                id: task.id,
                node: node,
                maxAttempts: configuration.maxAttempts,
                reason: reason,
                countAttempt: !restartedByUs && !stoppingForShutdown
            )
            logger.warning("task lost its worker", metadata: ["reason": "\(reason)", "outcome": "\(outcome)"])
            switch outcome {
            case .failed:
                metrics.recordOutcome(.failed)
                media.removeInput(key: task.inputKey)
            case .cancelled:
                metrics.recordOutcome(.cancelled)
                media.removeInput(key: task.inputKey)
            case .requeued, .notRunning:
                break
            }
        }
    }

    private func removeFile(_ path: String) {
        media.remove(URL(fileURLWithPath: path))
    }

    private func updateGauges() async {
        if let counts = try? await store.counts() { metrics.updateQueue(counts) }
    }
}

/// The phase a job is in, as its updates report it, shared between the task that follows the updates and
/// the one that times a cancel.
private final class PhaseWatch: Sendable {
    private struct State {
        var current: String?
        var changes = 0
    }

    private let state = Mutex(State())

    var current: String? { state.withLock { $0.current } }
    /// How many phases the job has entered so far.
    var changes: Int { state.withLock { $0.changes } }

    func enter(_ phase: String) {
        state.withLock { state in
            guard state.current != phase else { return }
            state.current = phase
            state.changes += 1
        }
    }
}
