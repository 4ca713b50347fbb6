import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import Logging

/// An error in OpenAI's shape, `{"error":{"message","type","param","code"}}`: what the official SDKs turn
/// into their own error classes (`BadRequestError`, `AuthenticationError`, `NotFoundError`, …).
package struct OpenAIError: HTTPResponseError, Sendable, Equatable {
    package var status: HTTPResponse.Status
    package var message: String
    package var type: String
    /// The request field at fault, where there is one.
    package var param: String?
    package var code: String?
    package var headers: HTTPFields

    package init(_ status: HTTPResponse.Status, _ message: String, param: String? = nil, code: String? = nil, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.type = Self.type(for: status)
        self.param = param
        self.code = code
        self.headers = headers
    }

    /// OpenAI's own types: 4xx requests are `invalid_request_error` (a wrong key too, told apart by its
    /// code), rate limits have their own, everything else is the server's.
    private static func type(for status: HTTPResponse.Status) -> String {
        switch status.code {
        case 429: "rate_limit_error"
        case 400..<500: "invalid_request_error"
        default: "server_error"
        }
    }

    private struct Body: Encodable {
        struct Detail: Encodable {
            var message: String
            var type: String
            var param: String?
            var code: String?

            // OpenAI sends `param` and `code` as null rather than leaving them out.
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(message, forKey: .message)
                try container.encode(type, forKey: .type)
                try container.encode(param, forKey: .param)
                try container.encode(code, forKey: .code)
            }

            enum CodingKeys: String, CodingKey { case message, type, param, code }

            init(message: String, type: String, param: String? = nil, code: String? = nil) {
                self.message = message
                self.type = type
                self.param = param
                self.code = code
            }
        }
        var error: Detail
    }

    package func response(from request: Request, context: some RequestContext) throws -> Response {
        JSONBody.response(status: status, value: Body(error: .init(message: message, type: type, param: param, code: code)), headers: headers)
    }

    package static func notFound(videoID: String) -> OpenAIError {
        OpenAIError(.notFound, "video \(videoID) not found", param: "video_id", code: "not_found")
    }
}

/// Gives every error under `/v1` OpenAI's shape, whoever raised it: the API key check, the 405 built from
/// the OpenAPI document, the router's 404, a body over its cap, validation. It sits inside the service's
/// `ErrorMiddleware` and answers with a response, so that one never sees these errors (and the seed's
/// routes keep their own body).
package struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    package init() {}

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path == "/v1" || path.hasPrefix("/v1/") else { return try await next(request, context) }
        do {
            return try await next(request, context)
        } catch {
            let converted = OpenAIError.converting(error)
            if let error = error as? RequestBodyError {
                context.logger.debug("request body cut short", metadata: ["reason": "\(error.reason)", "path": "\(path)"])
            } else if converted.status.code >= 500 {
                context.logger.error(
                    "request failed",
                    metadata: ["status": "\(converted.status.code)", "error": "\(String(reflecting: error))", "path": "\(path)"]
                )
            }
            return try converted.response(from: request, context: context)
        }
    }
}

extension OpenAIError {
    /// Any error, as the OpenAI-shaped answer it stands for.
    package static func converting(_ error: any Error) -> OpenAIError {
        switch error {
        case let error as OpenAIError:
            return error
        case let error as APIError:
            let code: String? =
                switch error.status {
                case .unauthorized: "invalid_api_key"
                case .notFound: "not_found"
                case .methodNotAllowed: "method_not_allowed"
                case .contentTooLarge: "request_too_large"
                default: nil
                }
            return OpenAIError(error.status, error.reason, code: code, headers: error.headers)
        case let error as RequestValidationError:
            return invalidRequest(error.issues)
        case let error as RequestBodyError:
            return OpenAIError(error.status, error.reason, code: error.openAICode)
        case let error as StoreUnavailable:
            return OpenAIError(.serviceUnavailable, "\(error.description); try again shortly", code: "store_unavailable", headers: [.retryAfter: "5"])
        case let error as HTTPError:
            return OpenAIError(error.status, error.body ?? error.status.reasonPhrase.lowercased(), headers: error.headers)
        case let error as any HTTPResponseError:
            return OpenAIError(error.status, error.status.reasonPhrase.lowercased())
        default:
            return OpenAIError(.internalServerError, "internal server error")
        }
    }

    /// One 400 for every problem found, named after the first one's field (OpenAI reports one `param`).
    package static func invalidRequest(_ issues: [ValidationIssue]) -> OpenAIError {
        /// Where in the body, as `loras[1].scale`.
        func path(_ issue: ValidationIssue) -> String? {
            let text = issue.loc.dropFirst().reduce(into: "") { text, part in
                switch part {
                case .key(let key): text += text.isEmpty ? key : "." + key
                case .index(let index): text += "[\(index)]"
                }
            }
            return text.isEmpty ? nil : text
        }
        /// The top-level field: OpenAI's `param` names a request parameter, not a place inside one.
        func field(_ issue: ValidationIssue) -> String? {
            guard issue.loc.count > 1, case .key(let key) = issue.loc[1] else { return nil }
            return key
        }
        let message = issues.map { issue in path(issue).map { "\($0): \(issue.msg)" } ?? issue.msg }.joined(separator: "; ")
        return OpenAIError(
            .badRequest,
            message.isEmpty ? "invalid request" : message,
            param: issues.first.flatMap(field),
            code: issues.first?.type
        )
    }
}
