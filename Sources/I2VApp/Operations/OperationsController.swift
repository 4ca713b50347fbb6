import Foundation
import Hummingbird
import HTTPTypes
import NIOCore

/// `/health`, `/ready`, `/models` and `/metrics`: what operators and load balancers look at.
struct OperationsController: Sendable {
    let role: NodeRole
    let node: String
    let store: any TaskStore
    /// The node's workers; nil on an API node, which is ready when it reaches the store and at least one
    /// worker node's heartbeat there is younger than a lease.
    let pool: WorkerPool?
    let catalog: ModelCatalogSource
    let lease: Duration
    let metrics: ServiceMetrics

    init(
        role: NodeRole = .serve, node: String = "", store: any TaskStore, pool: WorkerPool?, catalog: ModelCatalogSource,
        lease: Duration = .seconds(30), metrics: ServiceMetrics
    ) {
        self.role = role
        self.node = node
        self.store = store
        self.pool = pool
        self.catalog = catalog
        self.lease = lease
        self.metrics = metrics
    }

    /// A node of one worker, for code that builds the router without the pool (the contract tests).
    init(store: any TaskStore, worker: any InferenceWorker, supervisor: WorkerSupervisor?, catalog: ModelCatalog, metrics: ServiceMetrics) {
        let member = WorkerPool.Member(index: 0, device: supervisor?.device ?? "cpu", worker: supervisor ?? worker, slots: WorkerPool.defaultCapacity(workers: 1))
        self.init(store: store, pool: WorkerPool(members: [member], capacity: member.slots, metrics: metrics), catalog: .fixed(catalog), metrics: metrics)
    }

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("health") { _, _ in JSONBody.response(status: .ok, value: ["status": "ok"]) }
        router.get("ready", use: ready)
        router.get("models", use: models)
        router.get("metrics", use: exposition)
    }

    @Sendable func ready(request: Request, context: AppRequestContext) async throws -> Response {
        do {
            try await store.ping()
        } catch {
            throw APIError(.serviceUnavailable, "task store unreachable: \(error)", headers: Self.retryAfterStore)
        }
        guard let pool else { return try await apiNodeReady() }
        let workers = await pool.snapshot()
        // One ready worker is enough to take work; the others are listed so an operator sees what is down.
        guard let first = workers.first(where: { $0.ready != nil }), let ready = first.ready else {
            throw APIError(.serviceUnavailable, Self.unavailableReason(workers), headers: Self.retryAfterWorkers)
        }
        return JSONBody.response(
            status: .ok,
            value: ReadyBody(
                status: "ready",
                role: role.rawValue,
                node: node,
                model: ready.model.id,
                device: first.device,
                dtype: ready.dtype,
                speed: ready.speed,
                slots: pool.capacity,
                workerPid: workers.first?.status.pid,
                workers: workers.map {
                    WorkerBody(
                        index: $0.index,
                        device: $0.device,
                        state: $0.status.state.rawValue,
                        running: $0.running,
                        tasks: $0.tasks,
                        restarts: $0.status.restarts,
                        pid: $0.status.pid,
                        speed: $0.ready?.speed
                    )
                }
            )
        )
    }

    /// An API node can take submits once some worker node will run them: it lists the live ones.
    private func apiNodeReady() async throws -> Response {
        let now = Date()
        let live = try await store.workerNodes().filter { $0.isLive(now: now, lease: lease) }
        guard let first = live.first, let model = first.models.first else {
            throw APIError(
                .serviceUnavailable,
                "no live worker node: none has sent a heartbeat to the task store in the last \(Int(lease.seconds)) s",
                headers: Self.retryAfterWorkers
            )
        }
        return JSONBody.response(
            status: .ok,
            value: ReadyBody(
                status: "ready",
                role: role.rawValue,
                node: node,
                model: model.id,
                slots: live.reduce(0) { $0 + $1.slots },
                workerNodes: live.map {
                    WorkerNodeBody(
                        id: $0.id,
                        models: $0.models.map(\.id),
                        slots: $0.slots,
                        running: $0.running,
                        heartbeatAgeSeconds: (now.timeIntervalSince($0.heartbeatAt) * 10).rounded() / 10
                    )
                }
            )
        )
    }

    /// Every 503 says when to look again, so a load balancer or a start-up script polling /ready backs off
    /// instead of hammering a node that is loading a model. The same waits as the submit's 503s: a store
    /// outage is usually brief; a worker loading (or a worker node joining) takes longer.
    static let retryAfterStore: HTTPFields = [.retryAfter: "5"]
    static let retryAfterWorkers: HTTPFields = [.retryAfter: "10"]

    static func unavailableReason(_ workers: [WorkerPool.Snapshot]) -> String {
        if workers.count == 1 { return workers[0].status.problem ?? "inference worker not ready" }
        let each = workers.map { "worker \($0.index) (\($0.device)): \($0.status.problem ?? $0.status.state.rawValue)" }
        return "no inference worker is ready: " + each.joined(separator: "; ")
    }

    @Sendable func models(request: Request, context: AppRequestContext) async throws -> Response {
        let served: [ServedModel]
        if pool == nil {
            // An API node lists what the live worker nodes serve: nothing while none is alive.
            let now = Date()
            served = ModelCatalogSource.union(try await store.workerNodes().filter { $0.isLive(now: now, lease: lease) })?.models ?? []
        } else {
            served = try await catalog.current()?.models ?? []
        }
        let defaultID = served.first?.id
        // The preset as a ready worker of this node reports it (what it really turned on); unknown without one.
        let speed = await pool?.snapshot().first { $0.ready != nil }?.ready?.speed
        let models = served.map {
            ModelBody(
                id: $0.id, default: $0.id == defaultID, nativeArea: $0.nativeArea, sizeMultiple: $0.sizeMultiple, fps: $0.fps,
                speed: speed
            )
        }
        return JSONBody.response(status: .ok, value: ["models": models])
    }

    @Sendable func exposition(request: Request, context: AppRequestContext) async throws -> Response {
        if let counts = try? await store.counts() { metrics.updateQueue(counts) }
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition()))
        )
    }

    /// An API node has no workers: it names the live worker nodes instead.
    struct ReadyBody: Encodable {
        var status: String
        var role: String
        var node: String
        var model: String
        var device: String?
        var dtype: String?
        /// The speed preset of the first ready worker and what it turned on.
        var speed: WorkerSpeed?
        var slots: Int?
        var workerPid: Int32?
        var workers: [WorkerBody]?
        var workerNodes: [WorkerNodeBody]?
        enum CodingKeys: String, CodingKey {
            case status, role, node, model, device, dtype, speed, slots
            case workerPid = "worker_pid"
            case workers
            case workerNodes = "worker_nodes"
        }
    }

    struct WorkerNodeBody: Encodable {
        var id: String
        var models: [String]
        var slots: Int
        var running: Int
        var heartbeatAgeSeconds: Double
        enum CodingKeys: String, CodingKey {
            case id, models, slots, running
            case heartbeatAgeSeconds = "heartbeat_age_seconds"
        }
    }

    struct WorkerBody: Encodable {
        var index: Int
        var device: String
        var state: String
        var running: Int
        /// The ids of the tasks it is running.
        var tasks: [String]
        var restarts: Int
        var pid: Int32?
        /// What this worker runs (every worker of a node gets the same settings); nil until it is ready.
        var speed: WorkerSpeed?
    }

    struct ModelBody: Encodable {
        var id: String
        var `default`: Bool
        var nativeArea: Int
        var sizeMultiple: Int
        var fps: Int
        /// The speed preset it is served with, as a ready worker reports it; left out while none is ready.
        var speed: WorkerSpeed?
        enum CodingKeys: String, CodingKey {
            case id, `default`
            case nativeArea = "native_area"
            case sizeMultiple = "size_multiple"
            case fps, speed
        }
    }
}
