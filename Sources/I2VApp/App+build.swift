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

public func buildApplication(reader: ConfigReader, overrides: AppOverrides = .init()) async throws -> some ApplicationProtocol {
    try await buildApplication(configuration: ServiceConfiguration(reader: reader), overrides: overrides)
}

public func buildApplication(configuration: ServiceConfiguration, overrides: AppOverrides = .init()) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "i2v-server")
    logger.logLevel = Logger.Level(rawValue: configuration.logLevel.lowercased()) ?? .info

    try FileManager.default.createDirectory(at: configuration.dataDirectory, withIntermediateDirectories: true)
    let media = MediaStore(inputsDirectory: configuration.inputsDirectory, videosDirectory: configuration.videosDirectory)
    try media.createDirectories()
    let (store, storeService) = try await makeTaskStore(configuration: configuration, logger: logger)
    let keyring = try APIKeyring.load(configured: configuration.apiKeys, dataDirectory: configuration.dataDirectory, logger: logger)
    let metrics = ServiceMetrics()
    let signal = DispatchSignal()

    let doubles = overrides.workers.isEmpty ? overrides.worker.map { [$0] } ?? [] : overrides.workers
    var supervisors: [WorkerSupervisor] = []
    let pool: WorkerPool
    let catalog: ModelCatalog
    if !doubles.isEmpty {
        // Doubles stand in for the configured devices' workers, or for CPU workers where no list matches them.
        let labels: [String] = if case .list(let devices) = configuration.devices, devices.count == doubles.count { devices }
            else { Array(repeating: "cpu", count: doubles.count) }
        let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: doubles.count)
        let slots = WorkerPool.slotsPerWorker(total: capacity, workers: doubles.count)
        pool = WorkerPool(
            members: doubles.enumerated().map { .init(index: $0.offset, device: labels[$0.offset], worker: $0.element, slots: slots) },
            capacity: capacity,
            metrics: metrics
        )
        catalog = overrides.catalog ?? ModelCatalog(models: [ServedModel(id: "test-model", nativeArea: 15_360)])
    } else {
        let checkpoint = try await resolveCheckpoint(configuration: configuration, logger: logger)
        catalog = overrides.catalog ?? ModelCatalog.load(checkpoint: checkpoint)
        let devices = try await configuration.devices.resolve(logger: logger)
        let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: devices.count)
        let slots = WorkerPool.slotsPerWorker(total: capacity, workers: devices.count)
        for (index, device) in devices.enumerated() {
            supervisors.append(WorkerSupervisor(
                launch: workerLaunch(configuration: configuration, checkpoint: checkpoint, device: device, slots: slots),
                index: index,
                device: device,
                signal: signal,
                metrics: metrics,
                logger: logger
            ))
        }
        pool = WorkerPool(
            members: supervisors.map { .init(index: $0.index, device: $0.device, worker: $0, slots: slots) },
            capacity: capacity,
            metrics: metrics
        )
        logger.info("inference workers", metadata: ["devices": "\(devices.joined(separator: ","))", "slots_each": "\(slots)", "total": "\(capacity)"])
    }

    let dispatcher = Dispatcher(
        store: store,
        media: media,
        pool: pool,
        signal: signal,
        configuration: .init(
            maxAttempts: configuration.maxAttempts,
            cancelGrace: configuration.cancelGrace,
            shutdownGrace: configuration.shutdownGrace
        ),
        metrics: metrics,
        logger: logger
    )
    let sweeper = ResultSweeper(
        store: store,
        media: media,
        configuration: .init(
            videoTTL: configuration.videoTTL,
            taskRetention: configuration.taskRetention,
            interval: configuration.sweepInterval
        ),
        logger: logger
    )
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

    let router = try buildRouter(
        configuration: configuration,
        video: VideoController(
            useCases: TaskUseCases(
                store: store,
                media: media,
                intake: intake,
                catalog: catalog,
                queueChanged: signal,
                deviceMemory: {
                    await pool.largestFreeMemory().map { DeviceMemory(freeBytes: $0.freeBytes, bytesPerToken: $0.bytesPerToken) }
                },
                metrics: metrics,
                configuration: configuration
            ),
            catalog: catalog,
            metrics: metrics,
            configuration: configuration
        ),
        operations: OperationsController(store: store, pool: pool, catalog: catalog, metrics: metrics),
        keyring: keyring,
        logger: logger
    )
    // Shut down in reverse order: HTTP first, then the sweeper, then the dispatcher (which drains running
    // jobs), and the workers last, so the dispatcher can still talk to them while it drains.
    var services: [any Service] = supervisors
    services.append(contentsOf: [dispatcher, sweeper, ImageIntakeService(intake: intake)] as [any Service])
    // The store's connection pool stops after everything else: the dispatcher records how its jobs ended.
    if let storeService { services.insert(storeService, at: 0) }
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

func buildRouter(
    configuration: ServiceConfiguration,
    video: VideoController,
    operations: OperationsController,
    keyring: APIKeyring,
    logger: Logger
) throws -> Router<AppRequestContext> {
    let router = Router(context: AppRequestContext.self)
    let operationsByPath = try OpenAPIDocument.operations()
    router.addMiddleware {
        ErrorMiddleware()
        MethodNotAllowedMiddleware(operations: operationsByPath)
        VideoFileMiddleware(directory: configuration.videosDirectory.path, logger: logger)
        FileMiddleware(configuration.docsAssetsDirectory.path, urlBasePath: "/docs", searchForIndexHtml: false, logger: logger)
    }
    operations.addRoutes(to: router)
    try DocsController(assetsDirectory: configuration.docsAssetsDirectory).addRoutes(to: router)
    video.addRoutes(to: router.group("video").add(middleware: APIKeyAuthenticator(keyring: keyring)))
    return router
}

public struct ConfigurationProblem: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The checkpoint the worker loads: `I2V_MODEL_PATH`, or the demo checkpoint in the data dir, built on
/// first start (a few seconds) so `serve` works on a machine that has never seen the model.
func resolveCheckpoint(configuration: ServiceConfiguration, logger: Logger) async throws -> String {
    if let path = configuration.modelPath { return path }
    let demo = configuration.demoModelDirectory
    if FileManager.default.fileExists(atPath: demo.appending(path: "i2v_model.json").path) { return demo.path }
    logger.info("building the demo checkpoint", metadata: ["path": "\(demo.path)"])
    let python = absolutePython(configuration.pythonExecutable)
    let result = try await Subprocess.run(
        python.contains("/") ? .path(.init(python)) : .name(python),
        arguments: ["-m", "i2v_worker.demo", "--output", demo.path],
        environment: .inherit.updating(["PYTHONPATH": workerPythonPath(configuration)]),
        output: .discarded,
        error: .string(limit: 64 * 1024)
    )
    guard result.terminationStatus.isSuccess else {
        throw ConfigurationProblem("could not build the demo checkpoint with \(python): \(result.standardError)")
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
