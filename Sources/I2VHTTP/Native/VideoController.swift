import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import ImageIntake
import Logging
import Metrics
import NIOCore

/// `/video/submit`, `/video/status` and `/video/cancel`: the seed's API. Each route decodes its request,
/// calls its use case and encodes the answer; what happens to tasks is decided in the use cases.
package struct VideoController: Sendable {
    package let submitTask: SubmitTask
    package let readTask: ReadTask
    package let cancelTask: CancelTask
    package let stream: TaskEventStream
    package let metrics: ServiceMetrics
    package let configuration: APIConfiguration

    package init(useCases: TaskUseCases, metrics: ServiceMetrics, configuration: APIConfiguration) {
        self.submitTask = useCases.submit
        self.readTask = useCases.read
        self.cancelTask = useCases.cancel
        self.stream = TaskEventStream(
            readTask: useCases.read, publicURL: configuration.publicURL, metrics: metrics, keepAlive: configuration.streamKeepAlive
        )
        self.metrics = metrics
        self.configuration = configuration
    }

    package func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("submit", use: submit)
        group.post("status", use: status)
        group.post("cancel", use: cancel)
        group.get("stream/:requestId", use: stream.handle)
    }

    @Sendable package func submit(request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let owner = context.keyHash ?? ""
        do {
            try await submitTask.admit(owner: owner)
            let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
            let catalog = try await submitTask.servedModels()
            let submission = try SubmitRequest.validate(
                body, modelIDs: submitTask.askableModelIDs(catalog), defaultModel: catalog.defaultModel.id, served: catalog.models,
                loras: await submitTask.knownLoRAs(FieldReader.loraNames(in: body.member("loras"))), loraURLs: submitTask.acceptsLoRAURLs
            )
            let submitted = try await submitTask(
                submission, owner: owner, idempotencyKey: request.headers[.idempotencyKey], logger: context.logger
            )
            metrics.submitLatency.record(duration: ContinuousClock.now - started)
            var response = JSONBody.response(status: .accepted, value: ["requestId": submitted.id])
            if submitted.replayed { response.headers[.idempotentReplayed] = "true" }
            return response
        } catch let failure as SubmitFailure {
            let error = Self.apiError(failure)
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        } catch RequestBodyError.clientClosed {
            metrics.recordClientClosedSubmit()
            throw RequestBodyError.clientClosed
        } catch let error as RequestBodyError {
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        } catch let error as any HTTPResponseError {
            metrics.recordRejection(status: Int(error.status.code))
            throw error
        }
    }

    package static func apiError(_ failure: SubmitFailure) -> APIError {
        switch failure {
        case .rateLimited(let perMinute, let retryAfter):
            return .tooManyRequests("rate limit reached: at most \(perMinute) submits per minute per API key", retryAfter: retryAfter)
        case .queueFull(let queued):
            return .tooManyRequests("the queue is full (\(queued) tasks waiting); try again later", retryAfter: 30)
        case .modelNotServed(let model):
            return APIError(.internalServerError, "model \(model) is not served")
        case .unusableImage(let error):
            return APIError(.badRequest, error.reason)
        case .unusableLastImage(let error):
            return APIError(.badRequest, "last_image_url: \(error.reason)")
        case .tooBigForDevice(let width, let height, let frames, let needed, let free):
            let gib = { (bytes: Int) in String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }
            return APIError(
                .internalServerError,
                "not enough GPU memory for \(width)x\(height) with \(frames) frames (needs about \(gib(needed)), \(gib(free)) free): lower the resolution (image_size) or num_frames"
            )
        case .idempotencyKeyReused:
            return APIError(
                .conflict,
                "this Idempotency-Key was used within the last 24 hours for a different request; use a new key for a new request"
            )
        case .invalidIdempotencyKey:
            return APIError(.badRequest, "the Idempotency-Key header must be 1 to 255 printable ASCII characters")
        case .noWorkerNode:
            return APIError(.serviceUnavailable, SubmitFailure.noWorkerNodeReason, headers: [.retryAfter: "10"])
        case .noWorkerForModel(let model):
            return APIError(.serviceUnavailable, SubmitFailure.noWorkerForModelReason(model), headers: [.retryAfter: "10"])
        case .unusableWebhook(let refusal):
            return APIError(.badRequest, refusal.reason)
        case .unusableLoRA(let name, let reason):
            return APIError(.badRequest, "LoRA \(name) \(reason)")
        case .unusableLoRAURL(let url, let failure):
            return APIError(.badRequest, "LoRA \(url) \(failure.reason)")
        case .loraRanksAboveLimit(let total, let limit, let expert):
            let whose = expert.map { "the ranks of those on the \($0.rawValue) expert (its own and those for both)" } ?? "their ranks"
            return APIError(.badRequest, "loras: \(whose) add up to \(total), above the limit of \(limit) (I2V_LORA_MAX_RANK)")
        case .loRAsNotTaken(let model):
            return APIError(.badRequest, SubmitFailure.loRAsNotTakenReason(model))
        }
    }

    @Sendable package func status(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try await request.requestID(limit: configuration.maxBodyBytes)
        guard let view = try await readTask(id: id, owner: context.keyHash) else {
            throw APIError(.notFound, "task \(id) not found")
        }
        let body = TaskStatusDocument(view: view, publicURL: configuration.publicURL)
        return JSONBody.response(status: .ok, value: body)
    }

    @Sendable package func cancel(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try await request.requestID(limit: configuration.maxBodyBytes)
        var logger = context.logger
        logger[metadataKey: "requestId"] = "\(id)"
        switch try await cancelTask(id: id, owner: context.keyHash ?? "", logger: logger) {
        case .accepted:
            return JSONBody.response(status: .ok, value: ["status": "Succeed"])
        case .alreadyEnded(let status):
            let word = status == .succeed ? "succeeded" : "failed"
            throw APIError(.badRequest, "task \(id) already \(word) and cannot be cancelled")
        case .notFound:
            throw APIError(.notFound, "task \(id) not found")
        }
    }
}
