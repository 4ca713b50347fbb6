import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode
import Logging

/// Gives every error the service's JSON error body, and logs the ones that are the server's fault:
/// otherwise Hummingbird answers an unexpected error with an empty 500 and logs nothing.
package struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    package init() {}

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            if error.status == .internalServerError {
                context.logger.error("request failed", metadata: ["status": "\(error.status.code)", "reason": "\(error.reason)"])
            }
            throw error
        } catch let error as RequestValidationError {
            throw error
        } catch let error as RequestBodyError {
            // The client's doing, answered (if anyone is left to hear it) by `RequestHeadGuard` already.
            context.logger.debug("request body cut short", metadata: ["reason": "\(error.reason)", "path": "\(request.uri.path)"])
            throw APIError(error.status, error.reason)
        } catch let error as StoreUnavailable {
            // Nothing was changed: the client can send the same request again once the database is back.
            context.logger.warning("request refused: task store unavailable", metadata: ["reason": "\(error.reason)"])
            throw APIError(.serviceUnavailable, "\(error.description); try again shortly", headers: [.retryAfter: "5"])
        } catch let error as HTTPError {
            throw APIError(error.status, Self.reason(for: error.status), headers: error.headers)
        } catch let error as any HTTPResponseError {
            throw APIError(error.status, Self.reason(for: error.status))
        } catch {
            context.logger.error("unhandled error", metadata: ["error": "\(String(reflecting: error))", "path": "\(request.uri.path)"])
            throw APIError(.internalServerError, "internal server error")
        }
    }

    private static func reason(for status: HTTPResponse.Status) -> String {
        switch status {
        case .notFound: "not found"
        case .methodNotAllowed: "method not allowed"
        case .contentTooLarge: "request body too large"
        case .badRequest: "bad request"
        default: status.reasonPhrase.isEmpty ? "error \(status.code)" : status.reasonPhrase.lowercased()
        }
    }
}
