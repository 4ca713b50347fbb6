import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import NIOCore

/// `/health`, `/ready`, `/models` and `/metrics`: what operators and load balancers look at.
package struct OperationsController: Sendable {
    package let role: NodeRole
    package let node: String
    package let queue: any TaskQueue
    /// The node's workers; nil on an API node, which is ready when it reaches the store and at least one
    /// worker node's heartbeat there is younger than a lease.
    package let pool: WorkerPool?
    package let catalog: ModelCatalogSource
    package let nodes: LiveNodes
    package let prometheus: PrometheusExposition

    package init(
        role: NodeRole = .serve, node: String = "", queue: any TaskQueue, pool: WorkerPool?, catalog: ModelCatalogSource,
        nodes: LiveNodes, prometheus: PrometheusExposition
    ) {
        self.role = role
        self.node = node
        self.queue = queue
        self.pool = pool
        self.catalog = catalog
        self.nodes = nodes
        self.prometheus = prometheus
    }

    package func addRoutes(to router: Router<AppRequestContext>) {
        router.get("health") { _, _ in JSONBody.response(status: .ok, value: ["status": "ok"]) }
        router.get("ready", use: ready)
        router.get("models", use: models)
        router.get("metrics", use: exposition)
    }

    @Sendable package func ready(request: Request, context: AppRequestContext) async throws -> Response {
        do {
            try await queue.ping()
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
                slots: await pool.readySlots(),
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
        let live = try await nodes.live(now: now)
        guard let first = live.first, let model = first.models.first else {
            throw APIError(
                .serviceUnavailable,
                "no live worker node: none has sent a heartbeat to the task store in the last \(Int(nodes.lease.seconds)) s",
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
                        heartbeatAgeSeconds: (now.timeIntervalSince($0.heartbeatAt) * 10).rounded() / 10,
                        devices: $0.devices
                    )
                }
            )
        )
    }

    /// Every 503 says when to look again, so a load balancer or a start-up script polling /ready backs off
    /// instead of hammering a node that is loading a model. The same waits as the submit's 503s: a store
    /// outage is usually brief; a worker loading (or a worker node joining) takes longer.
    package static let retryAfterStore: HTTPFields = [.retryAfter: "5"]
    package static let retryAfterWorkers: HTTPFields = [.retryAfter: "10"]

    package static func unavailableReason(_ workers: [WorkerPool.Snapshot]) -> String {
        if workers.count == 1 { return workers[0].status.problem ?? "inference worker not ready" }
        let each = workers.map { "worker \($0.index) (\($0.device)): \($0.status.problem ?? $0.status.state.rawValue)" }
        return "no inference worker is ready: " + each.joined(separator: "; ")
    }

    @Sendable package func models(request: Request, context: AppRequestContext) async throws -> Response {
        let served: [ServedModel]
        if pool == nil {
            // An API node lists what the live worker nodes serve: nothing while none is alive.
            served = ModelCatalogSource.union(try await nodes.live())?.models ?? []
        } else {
            served = try await catalog.current()?.models ?? []
        }
        let defaultID = served.first?.id
        // The preset as a ready worker of this node reports it (what it really turned on); unknown without one.
        let speed = await pool?.snapshot().first { $0.ready != nil }?.ready?.speed
        let models = served.map {
            ModelBody(
                id: $0.id, default: $0.id == defaultID, nativeArea: $0.nativeArea, sizeMultiple: $0.sizeMultiple, fps: $0.fps,
                sizes: $0.sizes, maxFrames: $0.maxFrames, lastImage: $0.lastImage, experts: $0.experts, takesLoRAs: $0.takesLoRAs,
                speed: speed
            )
        }
        return JSONBody.response(status: .ok, value: ["models": models])
    }

    @Sendable package func exposition(request: Request, context: AppRequestContext) async throws -> Response {
        if let counts = try? await queue.counts() { prometheus.metrics.updateQueue(counts) }
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: prometheus.render()))
        )
    }

    /// An API node has no workers: it names the live worker nodes instead.
    package struct ReadyBody: Encodable {
        package var status: String
        package var role: String
        package var node: String
        package var model: String
        package var device: String?
        package var dtype: String?
        /// The speed preset of the first ready worker and what it turned on.
        package var speed: WorkerSpeed?
        package var slots: Int?
        package var workerPid: Int32?
        package var workers: [WorkerBody]?
        package var workerNodes: [WorkerNodeBody]?
        package enum CodingKeys: String, CodingKey {
            case status, role, node, model, device, dtype, speed, slots
            case workerPid = "worker_pid"
            case workers
            case workerNodes = "worker_nodes"
        }

        package init(
            status: String, role: String, node: String, model: String, device: String? = nil, dtype: String? = nil, speed: WorkerSpeed? = nil,
            slots: Int? = nil, workerPid: Int32? = nil, workers: [WorkerBody]? = nil, workerNodes: [WorkerNodeBody]? = nil
        ) {
            self.status = status
            self.role = role
            self.node = node
            self.model = model
            self.device = device
            self.dtype = dtype
            self.speed = speed
            self.slots = slots
            self.workerPid = workerPid
            self.workers = workers
            self.workerNodes = workerNodes
        }
    }

    package struct WorkerNodeBody: Encodable {
        package var id: String
        package var models: [String]
        package var slots: Int
        package var running: Int
        package var heartbeatAgeSeconds: Double
        /// Its workers' devices; a group's joined with `+`.
        package var devices: [String]
        package enum CodingKeys: String, CodingKey {
            case id, models, slots, running, devices
            case heartbeatAgeSeconds = "heartbeat_age_seconds"
        }

        package init(id: String, models: [String], slots: Int, running: Int, heartbeatAgeSeconds: Double, devices: [String] = []) {
            self.devices = devices
            self.id = id
            self.models = models
            self.slots = slots
            self.running = running
            self.heartbeatAgeSeconds = heartbeatAgeSeconds
        }
    }

    package struct WorkerBody: Encodable {
        package var index: Int
        package var device: String
        package var state: String
        package var running: Int
        /// The ids of the tasks it is running.
        package var tasks: [String]
        package var restarts: Int
        package var pid: Int32?
        /// What this worker runs (every worker of a node gets the same settings); nil until it is ready.
        package var speed: WorkerSpeed?

        package init(index: Int, device: String, state: String, running: Int, tasks: [String], restarts: Int, pid: Int32? = nil, speed: WorkerSpeed? = nil) {
            self.index = index
            self.device = device
            self.state = state
            self.running = running
            self.tasks = tasks
            self.restarts = restarts
            self.pid = pid
            self.speed = speed
        }
    }

    package struct ModelBody: Encodable {
        package var id: String
        package var `default`: Bool
        package var nativeArea: Int
        package var sizeMultiple: Int
        package var fps: Int
        /// The sizes it was trained at (`WxH`, the native one first), its longest clip, and whether a job
        /// may, must or must not give a last frame.
        package var sizes: [String]
        package var maxFrames: Int?
        package var lastImage: LastImageSupport
        /// 2 for a model whose denoising two experts share, each with its own guidance (`guidance_scale_2`).
        package var experts: Int
        /// Whether a job may give LoRAs: false where only groups of devices serve it.
        package var takesLoRAs: Bool
        /// The speed preset it is served with, as a ready worker reports it; left out while none is ready.
        package var speed: WorkerSpeed?
        package enum CodingKeys: String, CodingKey {
            case id, `default`
            case nativeArea = "native_area"
            case sizeMultiple = "size_multiple"
            case fps, sizes
            case maxFrames = "max_frames"
            case lastImage = "last_image"
            case experts
            case takesLoRAs = "loras"
            case speed
        }

        package func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(id, forKey: .id)
            try container.encode(`default`, forKey: .default)
            try container.encode(nativeArea, forKey: .nativeArea)
            try container.encode(sizeMultiple, forKey: .sizeMultiple)
            try container.encode(fps, forKey: .fps)
            try container.encode(sizes, forKey: .sizes)
            try container.encode(maxFrames, forKey: .maxFrames)
            try container.encode(lastImage, forKey: .lastImage)
            try container.encode(experts, forKey: .experts)
            try container.encode(takesLoRAs, forKey: .takesLoRAs)
            try container.encodeIfPresent(speed, forKey: .speed)
        }
    }
}
