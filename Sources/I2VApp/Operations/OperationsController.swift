import Hummingbird
import NIOCore

/// `/health`, `/ready`, `/models` and `/metrics`: what operators and load balancers look at.
struct OperationsController: Sendable {
    let store: any TaskStore
    let worker: any InferenceWorker
    let supervisor: WorkerSupervisor?
    let catalog: ModelCatalog
    let metrics: ServiceMetrics

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
            throw APIError(.serviceUnavailable, "task store unreachable: \(error)")
        }
        guard let ready = await worker.readiness() else {
            throw APIError(.serviceUnavailable, await supervisor?.unavailableReason() ?? "inference worker not ready")
        }
        return JSONBody.response(
            status: .ok,
            value: ReadyBody(
                status: "ready",
                model: ready.model.id,
                device: ready.device,
                dtype: ready.dtype,
                slots: ready.slots,
                workerPid: await supervisor?.workerProcessID()
            )
        )
    }

    @Sendable func models(request: Request, context: AppRequestContext) async throws -> Response {
        let defaultID = catalog.defaultModel.id
        let models = catalog.models.map {
            ModelBody(id: $0.id, default: $0.id == defaultID, nativeArea: $0.nativeArea, sizeMultiple: $0.sizeMultiple, fps: $0.fps)
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

    struct ReadyBody: Encodable {
        var status: String
        var model: String
        var device: String
        var dtype: String
        var slots: Int
        var workerPid: Int32?
        enum CodingKeys: String, CodingKey {
            case status, model, device, dtype, slots
            case workerPid = "worker_pid"
        }
    }

    struct ModelBody: Encodable {
        var id: String
        var `default`: Bool
        var nativeArea: Int
        var sizeMultiple: Int
        var fps: Int
        enum CodingKeys: String, CodingKey {
            case id, `default`
            case nativeArea = "native_area"
            case sizeMultiple = "size_multiple"
            case fps
        }
    }
}
