import Foundation

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// A stand-in for the Python worker in unit tests: it "runs" a job by sleeping per step, reports
/// progress, honours cancel at the next step, and writes a small file where the video goes.
actor FakeWorker: InferenceWorker {
    var stepDuration: Duration
    var isReady: Bool
    var ignoresCancel = false
    /// When set, every job ends with this worker error instead of a video.
    var failure: (kind: WorkerErrorKind, message: String)?
    var memory: WorkerMemory?
    private(set) var running: Set<String> = []
    private(set) var maxConcurrent = 0
    /// The most LoRA sets its running jobs held at once (a real worker would make all but one wait).
    private(set) var maxConcurrentLoRASets = 0
    private(set) var started: [String] = []
    /// Every job as the dispatcher sent it.
    private(set) var jobs: [WorkerJob] = []
    private(set) var cancelled: Set<String> = []
    private var lost: [String: AsyncStream<JobUpdate>.Continuation] = [:]
    /// Which run of a task is the current one: a run cut short by a crash or a restart may still be parked
    /// (held after its last step) when the task is started again, and must not end the new run.
    private var runs: [String: Int] = [:]
    private var nextRun = 0
    private(set) var restarts: [String] = []
    /// When set, a job that ran its last step waits here, as the real worker does while it decodes and
    /// encodes the video (cancels are no longer looked at), until `releaseHeldJobs()`.
    var holdsAfterLastStep = false
    private var held: [Int: String] = [:]
    /// The tasks whose current run waits after its last step; a stale run still parked there is not one.
    var heldAfterLastStep: Set<String> { Set(held.filter { runs[$0.value] == $0.key }.values) }
    private var release: [CheckedContinuation<Void, Never>] = []
    private var signal: DispatchSignal?

    /// The model it says it serves once ready.
    private(set) var model: ServedModel
    /// What a group's readiness says: how many processes make each video (nil: one, not a group).
    private(set) var ranks: Int?

    init(stepDuration: Duration = .milliseconds(5), ready: Bool = true, model: ServedModel = ServedModel(id: "test-model", nativeArea: 15_360)) {
        self.stepDuration = stepDuration
        self.isReady = ready
        self.model = model
    }

    func setModel(_ model: ServedModel) { self.model = model }
    func setRanks(_ ranks: Int?) { self.ranks = ranks }

    func attach(_ signal: DispatchSignal) { self.signal = signal }

    func setReady(_ ready: Bool) {
        isReady = ready
        signal?.wake()
    }

    func setStepDuration(_ duration: Duration) { stepDuration = duration }
    func setIgnoresCancel(_ value: Bool) { ignoresCancel = value }
    func setHoldsAfterLastStep(_ value: Bool) { holdsAfterLastStep = value }

    func releaseHeldJobs() {
        for continuation in release { continuation.resume() }
        release.removeAll()
    }
    func setFailure(_ kind: WorkerErrorKind, _ message: String) { failure = (kind, message) }
    func clearFailure() { failure = nil }
    func setMemory(freeBytes: Int, bytesPerToken: Int) { memory = WorkerMemory(freeBytes: freeBytes, bytesPerToken: bytesPerToken) }

    func readiness() -> WorkerReady? {
        guard isReady else { return nil }
        return WorkerReady(
            protocol: 1,
            model: WorkerModelInfo(
                id: model.id, nativeArea: model.nativeArea, sizeMultiple: model.sizeMultiple, fps: model.fps, sizes: model.sizes,
                maxFrames: model.maxFrames, lastImage: model.lastImage, experts: model.experts
            ),
            device: "cpu",
            dtype: "float32",
            slots: 2,
            memory: memory,
            ranks: ranks
        )
    }

    func start(_ job: WorkerJob) throws -> AsyncStream<JobUpdate> {
        guard isReady else { throw WorkerUnavailableError(reason: "not ready") }
        let (stream, continuation) = AsyncStream.makeStream(of: JobUpdate.self)
        running.insert(job.taskID)
        started.append(job.taskID)
        jobs.append(job)
        maxConcurrent = max(maxConcurrent, running.count)
        let sets = Set(jobs.filter { running.contains($0.taskID) }.map { ($0.loras ?? []).map { "\($0.sha256)@\($0.scale)" }.sorted() })
        maxConcurrentLoRASets = max(maxConcurrentLoRASets, sets.count)
        lost[job.taskID] = continuation
        nextRun += 1
        runs[job.taskID] = nextRun
        let step = stepDuration
        let run = nextRun
        Task { await self.perform(job, run: run, step: step, continuation: continuation) }
        return stream
    }

    private func isCurrent(_ taskID: String, run: Int) -> Bool {
        lost[taskID] != nil && runs[taskID] == run
    }

    private func perform(_ job: WorkerJob, run: Int, step: Duration, continuation: AsyncStream<JobUpdate>.Continuation) async {
        let clock = ContinuousClock()
        let began = clock.now
        // The dispatcher always sends the task's steps; a model's own default is the real worker's business.
        let steps = job.inferSteps ?? 30
        for index in 1...steps {
            try? await Task.sleep(for: step)
            guard isCurrent(job.taskID, run: run) else { return }
            if cancelled.contains(job.taskID) && !ignoresCancel {
                finish(job.taskID, .failed(kind: .cancelled, message: "cancelled at step \(index)"))
                return
            }
            continuation.yield(.progress(step: index, totalSteps: steps))
        }
        if holdsAfterLastStep {
            held[run] = job.taskID
            await withCheckedContinuation { release.append($0) }
            held[run] = nil
            guard isCurrent(job.taskID, run: run) else { return }
        }
        if let failure {
            finish(job.taskID, .failed(kind: failure.kind, message: failure.message))
            return
        }
        _ = FileManager.default.createFile(atPath: job.outputPath, contents: Data("fake mp4 for \(job.taskID)".utf8))
        let elapsed = clock.now - began
        finish(
            job.taskID,
            .done(
                WorkerDone(
                    taskID: job.taskID,
                    path: job.outputPath,
                    width: job.width,
                    height: job.height,
                    numFrames: job.numFrames,
                    fps: 16,
                    seed: job.seed,
                    inferenceSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                    encodeSeconds: 0
                )
            )
        )
    }

    private func finish(_ taskID: String, _ end: JobEnd) {
        running.remove(taskID)
        guard let continuation = lost.removeValue(forKey: taskID) else { return }
        continuation.yield(.finished(end))
        continuation.finish()
    }

    func cancel(taskID: String) {
        cancelled.insert(taskID)
    }

    func restart(reason: String) {
        restarts.append(reason)
        for id in Array(lost.keys) { finish(id, .workerLost(reason: reason, restartedByUs: true)) }
    }

    /// Simulates the worker process dying under its jobs.
    func crash() {
        for id in Array(lost.keys) { finish(id, .workerLost(reason: "the inference worker exited (signal 9)", restartedByUs: false)) }
    }
}
