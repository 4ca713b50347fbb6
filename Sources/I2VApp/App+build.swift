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
    /// Replaces the supervised Python worker.
    public var worker: (any InferenceWorker)?
    /// Replaces the catalog read from the checkpoint.
    public var catalog: ModelCatalog?

    public init(worker: (any InferenceWorker)? = nil, catalog: ModelCatalog? = nil) {
        self.worker = worker
        self.catalog = catalog
    }
}

public func buildApplication(reader: ConfigReader, overrides: AppOverrides = .init()) async throws -> some ApplicationProtocol {
    try await buildApplication(configuration: ServiceConfiguration(reader: reader), overrides: overrides)
}

public func buildApplication(configuration: ServiceConfiguration, overrides: AppOverrides = .init()) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "i2v-server")
    logger.logLevel = Logger.Level(rawValue: configuration.logLevel.lowercased()) ?? .info

    if let url = configuration.databaseURL, !url.hasPrefix("sqlite:") {
        throw ConfigurationProblem(
            "I2V_DATABASE_URL=\(url.split(separator: "@").last ?? "…") is not supported by this build: only the SQLite store is available yet (unset it to use \(configuration.databaseFile.path))"
        )
    }
    try FileManager.default.createDirectory(at: configuration.dataDirectory, withIntermediateDirectories: true)
    let media = MediaStore(inputsDirectory: configuration.inputsDirectory, videosDirectory: configuration.videosDirectory)
    try media.createDirectories()
    let store = try SQLiteTaskStore(path: configuration.databaseFile.path)
    let keyring = try APIKeyring.load(configured: configuration.apiKeys, dataDirectory: configuration.dataDirectory, logger: logger)
    let metrics = ServiceMetrics()
    let signal = DispatchSignal()

    let worker: any InferenceWorker
    let supervisor: WorkerSupervisor?
    let catalog: ModelCatalog
    if let override = overrides.worker {
        worker = override
        supervisor = nil
        catalog = overrides.catalog ?? ModelCatalog(models: [ServedModel(id: "test-model", nativeArea: 15_360)])
    } else {
        let checkpoint = try await resolveCheckpoint(configuration: configuration, logger: logger)
        catalog = overrides.catalog ?? ModelCatalog.load(checkpoint: checkpoint)
        let launched = WorkerSupervisor(
            launch: workerLaunch(configuration: configuration, checkpoint: checkpoint),
            signal: signal,
            metrics: metrics,
            logger: logger
        )
        worker = launched
        supervisor = launched
    }

    let dispatcher = Dispatcher(
        store: store,
        media: media,
        worker: worker,
        signal: signal,
        configuration: .init(
            maxConcurrent: configuration.maxConcurrent,
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
                deviceMemory: { await worker.readiness()?.memory },
                metrics: metrics,
                configuration: configuration
            ),
            catalog: catalog,
            metrics: metrics,
            configuration: configuration
        ),
        operations: OperationsController(store: store, worker: worker, supervisor: supervisor, catalog: catalog, metrics: metrics),
        keyring: keyring,
        logger: logger
    )
    // Shut down in reverse order: HTTP first, then the sweeper, then the dispatcher (which drains running
    // jobs), and the worker last, so the dispatcher can still talk to it while it drains.
    var services: [any Service] = []
    if let supervisor { services.append(supervisor) }
    services.append(contentsOf: [dispatcher, sweeper, ImageIntakeService(intake: intake)] as [any Service])
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

func workerLaunch(configuration: ServiceConfiguration, checkpoint: String) -> WorkerLaunch {
    var environment = [
        "PYTHONPATH": workerPythonPath(configuration),
        "I2V_MODEL_PATH": checkpoint,
        "I2V_WORKER_SLOTS": String(configuration.maxConcurrent),
        "I2V_CPU_OFFLOAD": configuration.cpuOffload ? "1" : "0",
        "I2V_VAE_TILING": configuration.vaeTiling ? "1" : "0",
        "PYTHONUNBUFFERED": "1",
    ]
    if let device = configuration.device { environment["I2V_DEVICE"] = device }
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
