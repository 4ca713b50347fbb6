import Configuration
import Foundation
import Hummingbird
import I2VOpenAPI
import ImageIntake
import Logging
import ServiceLifecycle
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// What a test may put in place of the real parts.
public struct AppOverrides: Sendable {
    /// Replaces the supervised Python worker (a node of one worker).
    public var worker: (any InferenceWorker)?
    /// Replaces the supervised Python workers, one per device; wins over `worker`.
    public var workers: [any InferenceWorker]
    /// Replaces the catalog read from the checkpoint.
    public var catalog: ModelCatalog?

    public init(worker: (any InferenceWorker)? = nil, workers: [any InferenceWorker] = [], catalog: ModelCatalog? = nil) {
        self.worker = worker
        self.workers = workers
        self.catalog = catalog
    }
}

public func buildApplication(reader: ConfigReader, role: NodeRole = .serve, overrides: AppOverrides = .init()) async throws -> some ApplicationProtocol {
    try await buildApplication(configuration: ServiceConfiguration(reader: reader), role: role, overrides: overrides)
}

public func buildApplication(
    configuration: ServiceConfiguration,
    role: NodeRole = .serve,
    overrides: AppOverrides = .init()
) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "i2v-server")
    logger.logLevel = Logger.Level(rawValue: configuration.logLevel.lowercased()) ?? .info
    logger[metadataKey: "node"] = "\(configuration.nodeID)"

    if role != .serve && !configuration.usesPostgres {
        throw ConfigurationProblem(
            "i2v-server \(role.rawValue) shares one queue with other nodes, which needs PostgreSQL: set I2V_DATABASE_URL=postgres://user:password@host:port/database. The SQLite store belongs to one node; use `i2v-server serve` for that."
        )
    }
    try FileManager.default.createDirectory(at: configuration.dataDirectory, withIntermediateDirectories: true)
    let media = MediaStore(inputsDirectory: configuration.inputsDirectory, videosDirectory: configuration.videosDirectory)
    try media.createDirectories()
    let signal = DispatchSignal()
    let (store, storeServices) = try await makeTaskStore(
        configuration: configuration,
        notify: role.runsWorkers ? signal : nil,
        logger: logger
    )
    let metrics = ServiceMetrics()

    var services: [any Service] = []
    var pool: WorkerPool?
    let catalog: ModelCatalogSource
    if role.runsWorkers {
        let node = try await buildWorkerNode(configuration: configuration, signal: signal, metrics: metrics, overrides: overrides, logger: logger)
        pool = node.pool
        catalog = .fixed(node.catalog)
        let dispatcher = Dispatcher(
            store: store,
            media: media,
            pool: node.pool,
            signal: signal,
            configuration: .init(
                node: configuration.nodeID,
                lease: configuration.lease,
                maxAttempts: configuration.maxAttempts,
                cancelGrace: configuration.cancelGrace,
                shutdownGrace: configuration.shutdownGrace,
                pollInterval: configuration.pollInterval
            ),
            metrics: metrics,
            logger: logger
        )
        // Shut down in reverse order: the dispatcher (which drains running jobs) before the workers, so it
        // can still talk to them while it drains.
        services.append(contentsOf: node.supervisors as [any Service])
        services.append(dispatcher)
        services.append(NodeHeartbeat(
            store: store, pool: node.pool, catalog: node.catalog, node: configuration.nodeID, interval: configuration.lease / 3,
            logger: logger
        ))
    } else {
        // An API node loads no model: it serves what the live worker nodes announce in the store.
        catalog = .registry(store: store, lease: configuration.lease)
    }
    services.append(LeaseReaper(
        store: store,
        maxAttempts: configuration.maxAttempts,
        interval: configuration.lease / 3,
        queueChanged: role.runsWorkers ? signal : nil,
        metrics: metrics,
        logger: logger
    ))
    services.append(ResultSweeper(
        store: store,
        media: media,
        configuration: .init(
            videoTTL: configuration.videoTTL,
            taskRetention: configuration.taskRetention,
            interval: configuration.sweepInterval
        ),
        logger: logger
    ))

    let operations = OperationsController(
        role: role, node: configuration.nodeID, store: store, pool: pool, catalog: catalog, lease: configuration.lease, metrics: metrics
    )
    let router: Router<AppRequestContext>
    if role.runsAPI {
        let keyring = try APIKeyring.load(configured: configuration.apiKeys, dataDirectory: configuration.dataDirectory, logger: logger)
        let intake = ImageIntake(
            configuration: ImageIntakeConfiguration(
                timeout: configuration.imageTimeout,
                connectTimeout: min(.seconds(5), configuration.imageTimeout),
                maxBytes: configuration.imageMaxBytes,
                maxPixels: configuration.imageMaxPixels,
                maxRedirects: 3,
                allowPrivateHosts: configuration.allowPrivateImageHosts
            ),
            logger: logger
        )
        services.append(ImageIntakeService(intake: intake))
        services.append(try WebhookDeliveryService(outbox: store, configuration: configuration, metrics: metrics, logger: logger))
        let workerPool = pool
        let useCases = TaskUseCases(
            store: store,
            media: media,
            intake: intake,
            models: catalog,
            queueChanged: signal,
            deviceMemory: {
                if let workerPool {
                    return await workerPool.largestFreeMemory().map { DeviceMemory(freeBytes: $0.freeBytes, bytesPerToken: $0.bytesPerToken) }
                }
                return await registeredDeviceMemory(store: store, lease: configuration.lease)
            },
            metrics: metrics,
            configuration: configuration
        )
        router = try buildRouter(
            configuration: configuration,
            video: VideoController(useCases: useCases, metrics: metrics, configuration: configuration),
            openAI: OpenAIVideosController(useCases: useCases, metrics: metrics, configuration: configuration, logger: logger),
            operations: operations,
            keyring: keyring,
            logger: logger
        )
    } else {
        router = buildOperationsRouter(operations: operations)
    }
    // The store's connection pool stops after everything else: the dispatcher records how its jobs ended.
    services.insert(contentsOf: storeServices, at: 0)
    logger.info("node starting", metadata: ["role": "\(role.rawValue)", "store": "\(configuration.usesPostgres ? "postgresql" : "sqlite")"])
    return Application(
        router: router,
        server: configuration.makeHTTPServer(),
        configuration: .init(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: "i2v-server"
        ),
        services: services,
        logger: logger
    )
}

/// On an API node, the device memory the live worker nodes announced: a job is refused only when it fits
/// on none of them (the largest free memory), and not at all while none says (a CPU, or none alive).
private func registeredDeviceMemory(store: any TaskStore, lease: Duration) async -> DeviceMemory? {
    guard let nodes = try? await store.workerNodes() else { return nil }
    let now = Date()
    let live = nodes.filter { $0.isLive(now: now, lease: lease) }
    guard !live.isEmpty, live.allSatisfy({ $0.freeMemoryBytes != nil }) else { return nil }
    guard let best = live.max(by: { ($0.freeMemoryBytes ?? 0) < ($1.freeMemoryBytes ?? 0) }) else { return nil }
    return DeviceMemory(freeBytes: best.freeMemoryBytes, bytesPerToken: best.bytesPerToken)
}

/// What a node runs: `serve` is one node doing everything; several `api` and `worker` nodes share one
/// PostgreSQL queue and one data dir.
public enum NodeRole: String, Sendable, CaseIterable {
    case serve
    /// HTTP only: no model, no worker.
    case api
    /// Inference workers only, with /health, /ready, /metrics and /models for its operators.
    case worker

    var runsAPI: Bool { self != .worker }
    var runsWorkers: Bool { self != .api }
}

/// The workers of a node: the supervised Python workers, one per device, or the doubles a test put in.
private func buildWorkerNode(
    configuration: ServiceConfiguration,
    signal: DispatchSignal,
    metrics: ServiceMetrics,
    overrides: AppOverrides,
    logger: Logger
) async throws -> (pool: WorkerPool, supervisors: [WorkerSupervisor], catalog: ModelCatalog) {
    let doubles = overrides.workers.isEmpty ? overrides.worker.map { [$0] } ?? [] : overrides.workers
    if !doubles.isEmpty {
        // Doubles stand in for the configured devices' workers, or for CPU workers where no list matches them.
        let labels: [String] = if case .list(let devices) = configuration.devices, devices.count == doubles.count { devices }
            else { Array(repeating: "cpu", count: doubles.count) }
        let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: doubles.count)
        let slots = WorkerPool.slotsPerWorker(total: capacity, workers: doubles.count)
        let pool = WorkerPool(
            members: doubles.enumerated().map { .init(index: $0.offset, device: labels[$0.offset], worker: $0.element, slots: slots) },
            capacity: capacity,
            metrics: metrics
        )
        return (pool, [], overrides.catalog ?? ModelCatalog(models: [ServedModel(id: "test-model", nativeArea: 15_360)]))
    }
    let checkpoint = try await resolveCheckpoint(configuration: configuration, logger: logger)
    let devices = try await configuration.devices.resolve(logger: logger)
    let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: devices.count)
    let slots = WorkerPool.slotsPerWorker(total: capacity, workers: devices.count)
    let supervisors = devices.enumerated().map { index, device in
        WorkerSupervisor(
            launch: workerLaunch(configuration: configuration, checkpoint: checkpoint, device: device, slots: slots),
            index: index,
            device: device,
            signal: signal,
            metrics: metrics,
            logger: logger
        )
    }
    let pool = WorkerPool(
        members: supervisors.map { .init(index: $0.index, device: $0.device, worker: $0, slots: slots) },
        capacity: capacity,
        metrics: metrics
    )
    logger.info("inference workers", metadata: ["devices": "\(devices.joined(separator: ","))", "slots_each": "\(slots)", "total": "\(capacity)"])
    return (pool, supervisors, overrides.catalog ?? ModelCatalog.load(checkpoint: checkpoint))
}

/// A worker node's HTTP side: only what its operators and load balancer look at.
func buildOperationsRouter(operations: OperationsController) -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self)
    router.addMiddleware { ErrorMiddleware() }
    operations.addRoutes(to: router)
    return router
}

func buildRouter(
    configuration: ServiceConfiguration,
    video: VideoController,
    openAI: OpenAIVideosController,
    operations: OperationsController,
    keyring: APIKeyring,
    logger: Logger
) throws -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self)
    let operationsByPath = try OpenAPIDocument.operations()
    let docs = try DocsController(assetsDirectory: configuration.docsAssetsDirectory)
    router.addMiddleware {
        ErrorMiddleware()
        OpenAIErrorMiddleware()
        MethodNotAllowedMiddleware(operations: operationsByPath)
        VideoFileMiddleware(directory: configuration.videosDirectory.path, logger: logger)
        docs.assetsMiddleware(logger: logger)
    }
    operations.addRoutes(to: router)
    docs.addRoutes(to: router)
    PlaygroundController().addRoutes(to: router)
    video.addRoutes(to: router.group("video").add(middleware: APIKeyAuthenticator(keyring: keyring)))
    openAI.addRoutes(to: router.group("v1").add(middleware: APIKeyAuthenticator(keyring: keyring)))
    return router
}

public struct ConfigurationProblem: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The checkpoint the worker loads: `I2V_MODEL_PATH`, or the demo checkpoint in the data dir, built on
/// first start (a few seconds) so `serve` works on a machine that has never seen the model.
///
/// Nodes sharing a data dir may all start at once: each builds into a folder of its own and renames it into
/// place, so none ever reads a half-written checkpoint, and the first rename wins.
func resolveCheckpoint(configuration: ServiceConfiguration, logger: Logger) async throws -> String {
    if let path = configuration.modelPath { return path }
    let demo = configuration.demoModelDirectory
    if FileManager.default.fileExists(atPath: demo.appending(path: "i2v_model.json").path) { return demo.path }
    logger.info("building the demo checkpoint", metadata: ["path": "\(demo.path)"])
    let staging = demo.deletingLastPathComponent().appending(path: ".\(demo.lastPathComponent).\(RandomIdentifier.hex128())")
    defer { try? FileManager.default.removeItem(at: staging) }
    let python = absolutePython(configuration.pythonExecutable)
    let result = try await Subprocess.run(
        python.contains("/") ? .path(.init(python)) : .name(python),
        arguments: ["-m", "i2v_worker.demo", "--output", staging.path],
        environment: .inherit.updating(["PYTHONPATH": workerPythonPath(configuration)]),
        output: .discarded,
        error: .string(limit: 64 * 1024)
    )
    guard result.terminationStatus.isSuccess else {
        throw ConfigurationProblem("could not build the demo checkpoint with \(python): \(result.standardError)")
    }
    do {
        try FileManager.default.moveItem(at: staging, to: demo)
    } catch where FileManager.default.fileExists(atPath: demo.appending(path: "i2v_model.json").path) {
        // Another node finished first; its checkpoint is the same demo model.
    }
    return demo.path
}

func absolutePython(_ executable: String) -> String {
    guard executable.contains("/"), !executable.hasPrefix("/") else { return executable }
    return URL(fileURLWithPath: executable).standardizedFileURL.path
}

func workerPythonPath(_ configuration: ServiceConfiguration) -> String {
    let inherited = ProcessInfo.processInfo.environment["PYTHONPATH"].map { ":" + $0 } ?? ""
    return configuration.workerDirectory.path + inherited
}

func workerLaunch(configuration: ServiceConfiguration, checkpoint: String, device: String, slots: Int) -> WorkerLaunch {
    var environment = [
        "PYTHONPATH": workerPythonPath(configuration),
        "I2V_MODEL_PATH": checkpoint,
        "I2V_WORKER_SLOTS": String(slots),
        "I2V_CPU_OFFLOAD": configuration.cpuOffload ? "1" : "0",
        "I2V_VAE_TILING": configuration.vaeTiling ? "1" : "0",
        "PYTHONUNBUFFERED": "1",
    ]
    environment.merge(DeviceSelection.workerEnvironment(device: device)) { _, pinned in pinned }
    environment.merge(configuration.speed.environment) { _, speed in speed }
    return WorkerLaunch(
        executable: absolutePython(configuration.pythonExecutable),
        arguments: ["-m", "i2v_worker"],
        environment: environment
    )
}

/// Owns the image downloader's HTTP client for the life of the service.
struct ImageIntakeService: Service {
    let intake: ImageIntake

    func run() async throws {
        try? await gracefulShutdown()
        try await intake.shutdown()
    }
}
