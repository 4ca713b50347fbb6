import Foundation
import I2VCore
import Logging
import ServiceLifecycle
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// How to start the Python inference worker.
public struct WorkerLaunch: Sendable {
    /// Variables of the server's environment the worker does not inherit.
    public static let withheldVariables = ["I2V_API_KEYS", "I2V_DATABASE_URL"]

    public var executable: String
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String?

    public init(executable: String, arguments: [String], environment: [String: String], workingDirectory: String? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
    }
}

/// Runs the Python worker as a child process, restarts it with backoff when it dies, and routes protocol
/// messages between it and the jobs the dispatcher started. A dead worker never takes the service down: the
/// jobs it held end with `.workerLost` and the dispatcher re-queues or fails them. A node runs one per device,
/// each restarted on its own, so a crash costs only the jobs of that one worker.
public actor WorkerSupervisor: InferenceWorker, Service {
    public nonisolated let index: Int
    public nonisolated let device: String
    private let launch: WorkerLaunch
    private let signal: DispatchSignal
    private let metrics: ServiceMetrics
    private let logger: Logger
    private let maxBackoff: Duration

    private var ready: WorkerReady?
    private var lastFailure: String?
    private var commands: AsyncStream<WorkerCommand>.Continuation?
    private var kills: AsyncStream<Void>.Continuation?
    private var jobs: [String: AsyncStream<JobUpdate>.Continuation] = [:]
    private var restartReason: String?
    private var processID: Int32?
    private var shuttingDown = false
    private var restarts = 0
    /// Starts in a row that ended before the worker became ready: a crash loop, not a one-off loss.
    private var failedStarts = 0
    private var reportedFatal = false

    public init(
        launch: WorkerLaunch,
        index: Int = 0,
        device: String,
        signal: DispatchSignal,
        metrics: ServiceMetrics,
        logger: Logger,
        maxBackoff: Duration = .seconds(30)
    ) {
        self.index = index
        self.device = device
        self.launch = launch
        self.signal = signal
        self.metrics = metrics
        var logger = logger
        logger[metadataKey: "worker"] = "\(index)"
        logger[metadataKey: "device"] = "\(device)"
        self.logger = logger
        self.maxBackoff = maxBackoff
    }

    // MARK: InferenceWorker

    public func readiness() -> WorkerReady? { ready }

    /// The running worker's process id, for operators (and the tests that kill it).
    public func workerProcessID() -> Int32? { processID }

    /// Why the worker is not ready, for `/ready`.
    public func unavailableReason() -> String {
        lastFailure.map { "inference worker not ready: \($0)" } ?? "inference worker is starting"
    }

    public func status() -> WorkerStatus {
        let state: WorkerState =
            if ready != nil { .ready } else if failedStarts > 0 || reportedFatal { .failed } else if restarts > 0 { .restarting } else { .starting }
        return WorkerStatus(state: state, restarts: restarts, pid: processID, problem: ready == nil ? unavailableReason() : nil)
    }

    public func start(_ job: WorkerJob) throws -> AsyncStream<JobUpdate> {
        guard ready != nil, let commands else {
            throw WorkerUnavailableError(reason: "the inference worker is not ready")
        }
        let (stream, continuation) = AsyncStream.makeStream(of: JobUpdate.self)
        jobs[job.taskID] = continuation
        commands.yield(.run(job))
        return stream
    }

    public func cancel(taskID: String) {
        guard jobs[taskID] != nil else { return }
        commands?.yield(.cancel(taskID: taskID))
    }

    public func restart(reason: String) {
        guard let kills else { return }
        logger.warning("restarting the inference worker", metadata: ["reason": "\(reason)"])
        restartReason = reason
        kills.yield()
    }

    // MARK: Service

    public func run() async throws {
        var backoff = Duration.milliseconds(500)
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully && !self.shuttingDown {
                let started = ContinuousClock.now
                let status = await self.runWorkerOnce()
                self.workerExited(status: status)
                if self.shuttingDown || Task.isShuttingDownGracefully || Task.isCancelled { break }
                // A worker that ran for a while before dying gets a fresh start; one that dies at once backs off.
                if ContinuousClock.now - started > .seconds(60) { backoff = .milliseconds(500) }
                self.logger.info("restarting the inference worker", metadata: ["after": "\(backoff)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, self.maxBackoff)
            }
        } onGracefulShutdown: {
            Task { await self.beginShutdown() }
        }
    }

    private func beginShutdown() {
        shuttingDown = true
        commands?.yield(.shutdown)
        commands?.finish()
    }

    /// Runs one worker process to its end; returns a description of how it ended.
    private func runWorkerOnce() async -> String {
        let (commandStream, commandContinuation) = AsyncStream.makeStream(of: WorkerCommand.self)
        let (killStream, killContinuation) = AsyncStream.makeStream(of: Void.self)
        self.commands = commandContinuation
        self.kills = killContinuation
        if shuttingDown { commandContinuation.yield(.shutdown) }

        var environment: [Environment.Key: String?] = [:]
        // The worker needs none of the server's secrets; keep them out of a process that runs model code.
        for secret in WorkerLaunch.withheldVariables { environment[Environment.Key(stringLiteral: secret)] = .some(nil) }
        for (key, value) in launch.environment { environment[Environment.Key(stringLiteral: key)] = value }
        var platformOptions = PlatformOptions()
        platformOptions.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .seconds(5))]
        let configuration = Subprocess.Configuration(
            executable: launch.executable.contains("/") ? .path(FilePath(launch.executable)) : .name(launch.executable),
            arguments: Arguments(launch.arguments),
            environment: .inherit.updating(environment),
            workingDirectory: launch.workingDirectory.map { FilePath($0) },
            platformOptions: platformOptions
        )
        logger.info("starting the inference worker", metadata: ["command": "\(launch.executable) \(launch.arguments.joined(separator: " "))"])
        do {
            let result = try await Subprocess.run(
                configuration,
                input: .inputWriter,
                output: .sequence,
                error: .sequence
            ) { execution in
                self.started(pid: execution.processIdentifier.value)
                let logger = self.logger
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await line in execution.standardError.strings() {
                            var metadata: Logger.Metadata = ["source": "worker"]
                            if let id = Self.taskID(inLogLine: line) { metadata["requestId"] = "\(id)" }
                            logger.info("\(line.trimmingCharacters(in: .newlines))", metadata: metadata)
                        }
                    }
                    group.addTask {
                        for await command in commandStream {
                            _ = try await execution.standardInputWriter.write(try command.line())
                            if command == .shutdown { break }
                        }
                        try await execution.standardInputWriter.finish()
                    }
                    group.addTask {
                        for await _ in killStream {
                            _ = try? execution.send(signal: .kill)
                        }
                    }
                    for try await line in execution.standardOutput.strings() {
                        self.handle(line: line)
                    }
                    group.cancelAll()
                }
            }
            return "\(result.terminationStatus)"
        } catch {
            logger.error("inference worker could not run", metadata: ["error": "\(error)"])
            return "could not start: \(error)"
        }
    }

    private func started(pid: Int32) { processID = pid }

    /// The worker writes `task=<id>` on its log lines about a task; the service log carries it as requestId.
    package static func taskID(inLogLine line: String) -> Substring? {
        guard let range = line.range(of: "task=") else { return nil }
        let id = line[range.upperBound...].prefix(32)
        return RandomIdentifier.isHex128(id) ? id : nil
    }

    private func handle(line: String) {
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { return }
        let event: WorkerEvent
        do {
            event = try JSONDecoder().decode(WorkerEvent.self, from: Data(trimmed.utf8))
        } catch {
            logger.warning("unreadable line from the inference worker", metadata: ["line": "\(trimmed.prefix(300))"])
            return
        }
        switch event {
        case .ready(let info):
            guard info.protocol == WorkerProtocol.version else {
                lastFailure = "worker speaks protocol \(info.protocol), the server speaks \(WorkerProtocol.version)"
                reportedFatal = true
                logger.error("\(lastFailure ?? "")")
                kills?.yield()
                return
            }
            ready = info
            lastFailure = nil
            failedStarts = 0
            reportedFatal = false
            logger.info(
                "inference worker ready",
                metadata: ["model": "\(info.model.id)", "torch_device": "\(info.device)", "dtype": "\(info.dtype)", "slots": "\(info.slots)"]
            )
            signal.wake()
        case .progress(let taskID, let step, let totalSteps, _):
            jobs[taskID]?.yield(.progress(step: step, totalSteps: totalSteps))
        case .phase(let taskID, let phase):
            jobs[taskID]?.yield(.phase(phase))
        case .done(let done):
            end(taskID: done.taskID, with: .done(done))
        case .error(let taskID, let kind, let message):
            if let taskID {
                end(taskID: taskID, with: .failed(kind: kind, message: message))
            } else {
                logger.error("inference worker error", metadata: ["kind": "\(kind.rawValue)", "message": "\(message)"])
            }
        case .fatal(let message):
            lastFailure = message
            reportedFatal = true
            logger.error("inference worker failed", metadata: ["message": "\(message)"])
        }
    }

    private func end(taskID: String, with end: JobEnd) {
        guard let continuation = jobs.removeValue(forKey: taskID) else { return }
        continuation.yield(.finished(end))
        continuation.finish()
    }

    private func workerExited(status: String) {
        let restartedByUs = restartReason != nil
        let reason =
            restartReason.map { "the inference worker was restarted: \($0)" }
            ?? "the inference worker exited (\(status))"
        if !shuttingDown {
            logger.error("inference worker exited", metadata: ["status": "\(status)", "jobs": "\(jobs.count)"])
            metrics.recordWorkerRestart(index: index, device: device)
            restarts += 1
            if ready == nil { failedStarts += 1 }
            if lastFailure == nil { lastFailure = "exited (\(status))" }
        }
        ready = nil
        processID = nil
        restartReason = nil
        commands?.finish()
        commands = nil
        kills?.finish()
        kills = nil
        for (_, continuation) in jobs {
            continuation.yield(.finished(.workerLost(reason: reason, restartedByUs: restartedByUs)))
            continuation.finish()
        }
        jobs.removeAll()
        signal.wake()
    }
}
