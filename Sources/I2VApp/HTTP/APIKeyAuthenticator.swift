import Foundation
import Hummingbird
import HTTPTypes

/// Requires `Authorization: Bearer <key>` on every route it guards; 401 with `WWW-Authenticate: Bearer`
/// otherwise.
struct APIKeyAuthenticator: RouterMiddleware {
    typealias Context = AppRequestContext
    let keyring: APIKeyring

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization] else {
            throw unauthorized("missing API key: send Authorization: Bearer <key>")
        }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw unauthorized("the Authorization header must be: Bearer <key>")
        }
        guard let hash = keyring.authenticate(String(parts[1]).trimmingCharacters(in: .whitespaces)) else {
            throw unauthorized("invalid API key")
        }
        var context = context
        context.keyHash = hash
        return try await next(request, context)
    }

    private func unauthorized(_ reason: String) -> APIError {
        APIError(.unauthorized, reason, headers: [.wwwAuthenticate: "Bearer"])
    }
}
