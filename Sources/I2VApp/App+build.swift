import Configuration
import Foundation
import Hummingbird
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VOpenAPI
import I2VStorePostgres
import I2VStoreSQLite
import I2VWebhooks
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
    try await buildNode(configuration: configuration, role: role, overrides: overrides).application()
}

/// The stages of a node's long-lived parts. They start in this order and stop in the reverse one, after
/// the HTTP server, which Hummingbird runs after every service so that it stops first: the API stops
/// accepting, its helpers (webhook delivery, the image downloader) stop, upkeep stops, the dispatcher
/// drains its jobs while the workers can still finish or hand them back, the workers stop, and the store's
/// connections close last because every stage before records through them.
public enum NodeStage: String, Sendable, CaseIterable {
    case store
    case workers
    case dispatch
    case upkeep
    case api
}

/// A node built and wired, not started: what `buildNode` returns, and what tests take their parts from
/// instead of assembling the object graph again.
public struct NodeParts {
    public let role: NodeRole
    package let configuration: ServiceConfiguration
    package let store: any TaskStore & TaskListing & WebhookOutbox
    package let media: MediaStore
    package let prometheus: PrometheusExposition
    package let pool: WorkerPool?
    package let nodes: LiveNodes
    package let router: Router<AppRequestContext>
    /// Each stage's services, in start order.
    package let stages: [(stage: NodeStage, services: [any Service])]
    package let logger: Logger

    /// Every long-lived part, in start order.
    package var services: [any Service] { stages.flatMap(\.services) }

    /// The stages as they stop (the HTTP server before all of them).
    public var shutdownOrder: [NodeStage] { stages.filter { !$0.services.isEmpty }.map(\.stage).reversed() }

    /// The node as a Hummingbird application: its services and its HTTP server in one service group.
    public func application() -> some ApplicationProtocol {
        Application(
            router: router,
            server: configuration.makeHTTPServer(),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "i2v-server"),
            services: services,
            logger: logger
        )
    }
}

/// Builds every part of a node for its role and wires them together; starts nothing.
public func buildNode(
    configuration: ServiceConfiguration,
    role: NodeRole = .serve,
    overrides: AppOverrides = .init()
) async throws -> NodeParts {
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
    try FileManager.default.createDirectory(at: configuration.loraDirectory, withIntermediateDirectories: true)
    let loras = LoRADirectory(directory: configuration.loraDirectory, logger: logger)
    let signal = DispatchSignal()
    let (store, storeServices) = try await makeTaskStore(
        configuration: configuration,
        notify: role.runsWorkers ? signal : nil,
        logger: logger
    )
    let prometheus = PrometheusExposition()
    let metrics = prometheus.metrics
    let nodes = LiveNodes(registry: store, lease: configuration.lease)

    var workerServices: [any Service] = []
    var dispatchServices: [any Service] = []
    var pool: WorkerPool?
    let catalog: ModelCatalogSource
    if role.runsWorkers {
        let node = try await buildWorkerNode(configuration: configuration, signal: signal, metrics: metrics, overrides: overrides, logger: logger)
        pool = node.pool
        let workerPool = node.pool
        let served = ModelCatalogSource.workers(
            { await workerPool.snapshot().compactMap(\.served) },
            configured: node.catalog
        )
        catalog = served
        workerServices = node.supervisors
        var dispatcher = configuration.dispatcher
        // What the ready workers serve, and what the configuration named: a task queued under the configured
        // name before the first worker was ready (a checkpoint whose own name differs) is still this node's.
        let configuredIDs = node.catalog.models.map(\.id)
        dispatcher.models = { ((try? await served.current()?.models.map(\.id)) ?? []) + configuredIDs }
        let nodeID = configuration.nodeID
        dispatcher.loRAsTakenElsewhere = {
            guard let live = try? await nodes.live() else { return false }
            let own = Set(((try? await served.current()?.models.map(\.id)) ?? []) + configuredIDs)
            return live.contains { node in node.id != nodeID && node.models.contains { $0.takesLoRAs && own.contains($0.id) } }
        }
        dispatchServices = [
            Dispatcher(
                store: store,
                media: media,
                loras: loras,
                pool: node.pool,
                signal: signal,
                configuration: dispatcher,
                metrics: metrics,
                logger: logger
            ),
            NodeHeartbeat(
                store: store, pool: node.pool, catalog: served, node: configuration.nodeID, interval: configuration.lease / 3,
                logger: logger
            ),
        ]
    } else {
        // An API node loads no model: it serves what the live worker nodes announce in the store.
        catalog = .registry(nodes)
    }
    let upkeepServices: [any Service] = [
        LeaseReaper(
            store: store,
            maxAttempts: configuration.maxAttempts,
            interval: configuration.lease / 3,
            lease: configuration.lease,
            queueChanged: role.runsWorkers ? signal : nil,
            metrics: metrics,
            logger: logger
        ),
        ResultSweeper(store: store, media: media, configuration: configuration.sweeper, logger: logger),
    ]

    let operations = OperationsController(
        role: role, node: configuration.nodeID, queue: store, pool: pool, catalog: catalog, nodes: nodes, prometheus: prometheus
    )
    var apiServices: [any Service] = []
    let router: Router<AppRequestContext>
    if role.runsAPI {
        let keyring = try APIKeyring.load(configured: configuration.apiKeys, dataDirectory: configuration.dataDirectory, logger: logger)
        let intake = ImageIntake(configuration: configuration.imageIntake, logger: logger)
        apiServices.append(ImageIntakeService(intake: intake))
        apiServices.append(try WebhookDeliveryService(outbox: store, configuration: configuration, metrics: metrics, logger: logger))
        let workerPool = pool
        var loraURLs: LoRAURLDownloads?
        if configuration.loraURLs {
            LoRAURLDownloads.removeStalePartials(in: configuration.loraDirectory, olderThan: .seconds(86_400), logger: logger)
            loraURLs = LoRAURLDownloads(
                catalog: loras, intake: intake, maxBytes: configuration.loraURLMaxBytes, timeout: configuration.loraURLTimeout,
                reuse: configuration.loraURLReuse
            )
        }
        let useCases = TaskUseCases(
            store: store,
            nodes: nodes,
            media: media,
            intake: intake,
            models: catalog,
            loras: loras,
            loraURLs: loraURLs,
            queueChanged: signal,
            deviceMemory: {
                if let workerPool {
                    return await workerPool.largestFreeMemory().map { DeviceMemory(freeBytes: $0.freeBytes, bytesPerToken: $0.bytesPerToken) }
                }
                return await nodes.largestFreeMemory()
            },
            webhookOutbox: store,
            metrics: metrics,
            configuration: configuration.useCases
        )
        router = try buildRouter(
            configuration: configuration,
            video: VideoController(useCases: useCases, metrics: metrics, configuration: configuration.api),
            openAI: OpenAIVideosController(useCases: useCases, metrics: metrics, configuration: configuration.api, logger: logger),
            operations: operations,
            loras: LoRAsController(catalog: loras, acceptsURLs: configuration.loraURLs),
            keyring: keyring,
            logger: logger
        )
    } else {
        router = buildOperationsRouter(operations: operations)
    }
    logger.info("node starting", metadata: ["role": "\(role.rawValue)", "store": "\(configuration.usesPostgres ? "postgresql" : "sqlite")"])
    return NodeParts(
        role: role,
        configuration: configuration,
        store: store,
        media: media,
        prometheus: prometheus,
        pool: pool,
        nodes: nodes,
        router: router,
        stages: [
            (.store, storeServices),
            (.workers, workerServices),
            (.dispatch, dispatchServices),
            (.upkeep, upkeepServices),
            (.api, apiServices),
        ],
        logger: logger
    )
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
    loras: LoRAsController,
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
    let v1 = router.group("v1").add(middleware: APIKeyAuthenticator(keyring: keyring))
    openAI.addRoutes(to: v1)
    loras.addRoutes(native: router.group().add(middleware: APIKeyAuthenticator(keyring: keyring)), openAI: v1)
    return router
}

/// Owns the image downloader's HTTP client for the life of the service.
struct ImageIntakeService: Service {
    let intake: ImageIntake

    func run() async throws {
        try? await gracefulShutdown()
        try await intake.shutdown()
    }
}
