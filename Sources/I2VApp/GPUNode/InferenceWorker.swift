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
    case finished(JobEnd)
}

public struct WorkerUnavailableError: Error, Sendable {
    public var reason: String
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
}

/// A wake-up for the dispatcher loop: new work, a free slot, a cancel, or the worker becoming ready.
/// Wake-ups coalesce; the loop re-reads the store each time, so none of them carries data.
public struct DispatchSignal: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() {
        (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    public func wake() { continuation.yield() }
    func finish() { continuation.finish() }
    func wakeups() -> AsyncStream<Void> { stream }
}
