import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import ImageIntake
import Logging
import Metrics
import NIOCore
import NIOPosix

/// `/v1/videos`: OpenAI's videos API over the same use cases, keys and queue as the seed's routes, so the
/// official `openai` SDKs work unchanged. Each route decodes its request, calls a use case and encodes the
/// answer; errors leave in OpenAI's shape (`OpenAIErrorMiddleware`).
package struct OpenAIVideosController: Sendable {
    /// OpenAI's default page size.
    package static let defaultListLimit = 20

    package let useCases: TaskUseCases
    package let metrics: ServiceMetrics
    package let configuration: APIConfiguration
    package let videos: LocalFileSystem
    package let thumbnail: VideoThumbnail

    package init(useCases: TaskUseCases, metrics: ServiceMetrics, configuration: APIConfiguration, logger: Logger) {
        self.useCases = useCases
        self.metrics = metrics
        self.configuration = configuration
        self.videos = LocalFileSystem(rootFolder: configuration.videosDirectory.path, threadPool: .singleton, logger: logger)
        self.thumbnail = VideoThumbnail()
    }

    package func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("videos", use: create)
        group.get("videos", use: list)
        group.get("videos/:video_id", use: retrieve)
        group.delete("videos/:video_id", use: delete)
        group.get("videos/:video_id/content", use: content)
    }

    /// `loras` is the request's own value of that field: only the LoRAs it names are looked up.
    private func models(loras: JSONValue?) async throws -> VideoCreateRequest.Models {
        let catalog = try await useCases.submit.servedModels()
        return VideoCreateRequest.Models(
            ids: useCases.submit.askableModelIDs(catalog),
            defaultModel: catalog.defaultModel.id,
            fps: Dictionary(catalog.models.map { ($0.id, $0.fps) }, uniquingKeysWith: { first, _ in first }),
            served: catalog.models,
            loras: await useCases.submit.knownLoRAs(FieldReader.loraNames(in: loras)),
            loraURLs: useCases.submit.acceptsLoRAURLs
        )
    }

    // MARK: Create

    @Sendable package func create(request: Request, context: AppRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let owner = context.keyHash ?? ""
        do {
            try await useCases.submit.admit(owner: owner)
            let submission = try await decodeCreate(request)
            let submitted = try await useCases.submit(
                submission, owner: owner, idempotencyKey: request.headers[.idempotencyKey], logger: context.logger
            )
            metrics.submitLatency.record(duration: ContinuousClock.now - started)
            guard let view = try await useCases.read(id: submitted.id, owner: owner) else {
                // Deleted by a concurrent request before this one could answer.
                throw OpenAIError.notFound(videoID: VideoID.name(taskID: submitted.id))
            }
            var response = JSONBody.response(
                status: .ok,
                value: videoObject(view.task, queuePosition: view.queuePosition, catalog: try? await useCases.submit.models.current())
            )
            if submitted.replayed { response.headers[.idempotentReplayed] = "true" }
            return response
        } catch {
            let answer = Self.openAIError(error)
            if case RequestBodyError.clientClosed = error {
                metrics.recordClientClosedSubmit()
            } else {
                metrics.recordRejection(status: Int(answer.status.code))
            }
            // The middleware logs a server-side failure with its cause, and answers it the same way.
            throw answer.status == .internalServerError ? error : answer
        }
    }

    /// JSON or multipart, by Content-Type; anything else is refused before its body is read.
    private func decodeCreate(_ request: Request) async throws -> Submission {
        let contentType = request.headers[.contentType] ?? "application/json"
        if let boundary = VideoFormReader.boundary(contentType: contentType) {
            let form = try await VideoFormReader.read(
                request.body,
                boundary: boundary,
                upload: useCases.submit.intake.upload(),
                fieldLimit: configuration.maxBodyBytes,
                spoolingTo: configuration.uploadSpoolDirectory
            )
            let loras = try? VideoCreateRequest.loras(in: form)
            return try VideoCreateRequest.validate(form: form, models: try await models(loras: loras))
        }
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        guard mediaType == "application/json" || mediaType.hasSuffix("+json") else {
            throw OpenAIError(
                .unsupportedMediaType,
                "Content-Type must be application/json or multipart/form-data (with a boundary), not \(contentType)",
                code: "unsupported_media_type"
            )
        }
        // Room for data: URLs of the largest images accepted (a first and a last frame), in base64, beside
        // the other fields.
        let limit = configuration.maxBodyBytes + 2 * ((configuration.imageMaxBytes + 2) / 3 * 4)
        let body = try await request.jsonBody(limit: limit, spoolingTo: configuration.uploadSpoolDirectory)
        return try VideoCreateRequest.validate(json: body, models: try await models(loras: body.member("loras")))
    }

    /// Every way a create can fail, as its OpenAI answer.
    package static func openAIError(_ error: any Error) -> OpenAIError {
        switch error {
        case let failure as SubmitFailure:
            let reason = VideoController.apiError(failure).reason
            switch failure {
            case .rateLimited(_, let retryAfter):
                return OpenAIError(.tooManyRequests, reason, code: "rate_limit_exceeded", headers: [.retryAfter: String(max(1, retryAfter))])
            case .queueFull:
                return OpenAIError(.tooManyRequests, reason, code: "queue_full", headers: [.retryAfter: "30"])
            case .modelNotServed:
                return OpenAIError(.badRequest, reason, param: "model", code: "model_not_found")
            case .unusableImage(let image):
                return imageError(image)
            case .unusableLastImage(let image):
                return imageError(image, param: "last_image")
            case .tooBigForDevice:
                // Not retried by the SDKs (as a 5xx would be): the same job cannot fit the next time either.
                return OpenAIError(.badRequest, reason, param: "size", code: "insufficient_gpu_memory")
            case .idempotencyKeyReused:
                return OpenAIError(.conflict, reason, code: "idempotency_key_reused")
            case .invalidIdempotencyKey:
                return OpenAIError(.badRequest, reason, code: "invalid_idempotency_key")
            case .noWorkerNode, .noWorkerForModel:
                return OpenAIError(.serviceUnavailable, reason, code: "no_worker_node", headers: [.retryAfter: "10"])
            case .unusableWebhook:
                return OpenAIError(.badRequest, reason, param: "webhook_url", code: "invalid_webhook_url")
            case .unusableLoRA, .unusableLoRAURL, .loraRanksAboveLimit, .loRAsNotTaken:
                return OpenAIError(.badRequest, reason, param: "loras", code: "unusable_lora")
            }
        case let failure as VideoFormFailure:
            switch failure {
            case .malformed(let reason):
                return OpenAIError(.badRequest, reason, code: "invalid_multipart")
            case .fieldsTooLarge(let limit):
                return OpenAIError(.contentTooLarge, "the form's fields are larger than \(limit) bytes", code: "request_too_large")
            case .bodyTooLarge(let limit):
                return OpenAIError(.contentTooLarge, "the request body is larger than \(limit) bytes", code: "request_too_large")
            case .image(let image):
                return imageError(image)
            }
        default:
            return OpenAIError.converting(error)
        }
    }

    private static func imageError(_ error: ImageIntakeError, param: String = "input_reference") -> OpenAIError {
        OpenAIError(.badRequest, error.reason, param: param, code: "invalid_image_\(snakeCase(error.cause.label))")
    }

    private static func snakeCase(_ camel: String) -> String {
        camel.reduce(into: "") { text, character in
            if character.isUppercase { text += "_" + character.lowercased() } else { text.append(character) }
        }
    }

    // MARK: Read

    @Sendable package func retrieve(request: Request, context: AppRequestContext) async throws -> Response {
        let (id, videoID) = try Self.taskID(context)
        guard let view = try await useCases.read(id: id, owner: context.keyHash) else { throw OpenAIError.notFound(videoID: videoID) }
        return JSONBody.response(
            status: .ok, value: videoObject(view.task, queuePosition: view.queuePosition, catalog: try? await useCases.submit.models.current()))
    }

    @Sendable package func list(request: Request, context: AppRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        var after: String?
        // An empty `after=` is refused like any other value that is not a video id (as an empty `limit=` or
        // `order=` is): the first page is asked for by leaving `after` out.
        if let cursor = query["after"].map(String.init) {
            guard let id = VideoID.taskID(cursor) else {
                let given = cursor.isEmpty ? "empty (leave it out for the first page)" : "not \(cursor)"
                throw OpenAIError(.badRequest, "after must be a video id (video_ and 32 hex digits), \(given)", param: "after", code: "invalid_value")
            }
            after = id
        }
        var limit = Self.defaultListLimit
        if let text = query["limit"].map(String.init) {
            guard let value = Int(text), (1...ListTasks.maxLimit).contains(value) else {
                throw OpenAIError(.badRequest, "limit must be an integer from 1 to \(ListTasks.maxLimit), not \(text)", param: "limit", code: "invalid_value")
            }
            limit = value
        }
        var order = TaskListOrder.descending
        if let text = query["order"].map(String.init) {
            guard let value = TaskListOrder(rawValue: text) else {
                throw OpenAIError(.badRequest, "order must be asc or desc, not \(text)", param: "order", code: "invalid_value")
            }
            order = value
        }
        switch try await useCases.list(owner: context.keyHash ?? "", after: after, limit: limit, order: order) {
        case .page(let tasks, let hasMore):
            let catalog = try? await useCases.submit.models.current()
            let page = VideoList(data: tasks.map { videoObject($0.task, queuePosition: $0.queuePosition, catalog: catalog) }, hasMore: hasMore)
            return JSONBody.response(status: .ok, value: page)
        case .unknownCursor:
            throw OpenAIError(.badRequest, "after names no video of this API key (deleted?)", param: "after", code: "invalid_value")
        }
    }

    // MARK: Delete

    @Sendable package func delete(request: Request, context: AppRequestContext) async throws -> Response {
        let (id, videoID) = try Self.taskID(context)
        var logger = context.logger
        logger[metadataKey: "requestId"] = "\(id)"
        switch try await useCases.delete(id: id, owner: context.keyHash ?? "", logger: logger) {
        case .deleted:
            return JSONBody.response(status: .ok, value: VideoDeleted(id: videoID))
        case .notFound:
            throw OpenAIError.notFound(videoID: videoID)
        }
    }

    // MARK: Content

    package enum Variant: String {
        case video, thumbnail
    }

    @Sendable package func content(request: Request, context: AppRequestContext) async throws -> Response {
        let (id, videoID) = try Self.taskID(context)
        let text = request.uri.queryParameters["variant"].map(String.init) ?? Variant.video.rawValue
        guard let variant = Variant(rawValue: text) else {
            throw OpenAIError(.badRequest, "variant must be video or thumbnail, not \(text)", param: "variant", code: "invalid_value")
        }
        guard let view = try await useCases.read(id: id, owner: context.keyHash) else { throw OpenAIError.notFound(videoID: videoID) }
        let task = view.task
        guard task.status == .succeed, let result = task.result else {
            throw OpenAIError(
                .notFound, "video \(videoID) has no content: it is \(VideoObject.status(task.status))", param: "video_id", code: "video_not_ready")
        }
        let gone = OpenAIError(.notFound, "the content of video \(videoID) has expired", param: "video_id", code: "video_expired")
        guard !task.videoExpired,
            let file = videos.getFileIdentifier("/\(result.videoName).mp4"),
            let attributes = try await videos.getAttributes(id: file), !attributes.isFolder
        else { throw gone }
        switch variant {
        case .video:
            let answer = VideoAnswer(
                request: request.headers,
                size: attributes.size,
                modified: Int(attributes.modificationDate.timeIntervalSince1970.rounded(.down))
            )
            guard let bytes = answer.bytes else { return Response(status: answer.status, headers: answer.headers) }
            return Response(status: answer.status, headers: answer.headers, body: try await videos.loadFile(id: file, range: bytes, context: context))
        case .thumbnail:
            let jpeg: [UInt8]
            do {
                jpeg = try await thumbnail.firstFrame(of: useCases.submit.media.videoURL(name: result.videoName))
            } catch {
                switch error {
                case .unavailable(let reason), .failed(let reason):
                    throw OpenAIError(.internalServerError, reason, code: "thumbnail_failed")
                }
            }
            return Response(
                status: .ok,
                headers: [.contentType: "image/jpeg", .contentLength: String(jpeg.count)],
                body: .init(byteBuffer: ByteBuffer(bytes: jpeg))
            )
        }
    }

    // MARK: Helpers

    /// The task id in the path, and the video id as the client wrote it; one that cannot name a task is 404.
    private static func taskID(_ context: AppRequestContext) throws -> (task: String, video: String) {
        let videoID = context.parameters.get("video_id") ?? ""
        guard let id = VideoID.taskID(videoID) else { throw OpenAIError.notFound(videoID: videoID) }
        return (id, videoID)
    }

    /// A finished task's own frame rate is in its result; the catalog gives a waiting one's.
    private func videoObject(_ task: TaskRecord, queuePosition: Int?, catalog: ModelCatalog?) -> VideoObject {
        VideoObject(
            task: task,
            queuePosition: queuePosition,
            fps: task.result?.fps ?? catalog?.model(id: task.parameters.model)?.fps ?? catalog?.defaultModel.fps ?? ServedModel.defaultFPS,
            videoTTL: configuration.videoTTL
        )
    }
}
