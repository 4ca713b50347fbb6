import I2VCore

/// How a job left the worker.
public enum JobEnd: Sendable, Equatable {
    case done(WorkerDone)
    case failed(kind: WorkerErrorKind, message: String)
    /// The worker process went away while it held the job. `restartedByUs` is true when the supervisor
    /// killed it on purpose (a cancel that did not stop in time), so the other jobs it held are not to blame.
    case workerLost(reason: String, restartedByUs: Bool)
}

public enum JobUpdate: Sendable, Equatable {
    case progress(step: Int, totalSteps: Int)
    /// The job entered a phase of its work (`JobPhase` names the ones workers report today).
    case phase(String)
    case finished(JobEnd)
}

public struct WorkerUnavailableError: Error, Sendable {
    public var reason: String

    package init(reason: String) {
        self.reason = reason
    }
}

/// What the dispatcher needs from whatever runs the model: the supervised Python worker in production,
/// a double in unit tests.
public protocol InferenceWorker: Sendable {
    /// The `ready` message of the running worker, nil while none is ready.
    func readiness() async -> WorkerReady?
    /// Sends the job; the stream yields progress and ends with exactly one `.finished`.
    func start(_ job: WorkerJob) async throws -> AsyncStream<JobUpdate>
    /// Asks the worker to stop a job at its next step.
    func cancel(taskID: String) async
    /// Kills and restarts the worker process; every job it held ends with `.workerLost(restartedByUs: true)`.
    func restart(reason: String) async
    /// Where the worker stands, for operators.
    func status() async -> WorkerStatus
}

extension InferenceWorker {
    /// A worker without a process of its own (a test double) is either ready or starting, and never restarts.
    public func status() async -> WorkerStatus {
        let ready = await readiness() != nil
        return WorkerStatus(state: ready ? .ready : .starting, restarts: 0, pid: nil, problem: ready ? nil : "inference worker not ready")
    }
}

public enum WorkerState: String, Sendable, Equatable {
    case ready
    /// Loading the model for the first time.
    case starting
    /// Coming back after its process went away.
    case restarting
    /// Its last start ended before it became ready (or it reported a fatal error); it is retried with backoff.
    case failed
}

public struct WorkerStatus: Sendable, Equatable {
    public var state: WorkerState
    /// Times its process went away other than for a shutdown.
    public var restarts: Int
    public var pid: Int32?
    /// Why it is not ready, in words an operator can act on; nil while it is.
    public var problem: String?

    public init(state: WorkerState, restarts: Int, pid: Int32?, problem: String?) {
        self.state = state
        self.restarts = restarts
        self.pid = pid
        self.problem = problem
    }
}

/// The phases a job goes through in the worker, in order. Each heeds a cancel at its own checkpoints
/// (between denoising steps, between the VAE's frames, between encoder layers), so the cancel grace is
/// counted per phase: a job that moves on to its next phase is still heading for a checkpoint.
public enum JobPhase: String, Sendable, CaseIterable {
    case encodePrompt = "encode_prompt"
    case encodeImage = "encode_image"
    case denoise
    case decode
    case encodeVideo = "encode_video"
}
