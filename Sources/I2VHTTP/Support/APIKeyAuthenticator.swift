import Foundation
import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode

/// Requires `Authorization: Bearer <key>` on every route it guards; 401 with `WWW-Authenticate: Bearer`
/// otherwise.
package struct APIKeyAuthenticator: RouterMiddleware {
    package typealias Context = AppRequestContext
    package let keyring: APIKeyring

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
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

    package init(keyring: APIKeyring) {
        self.keyring = keyring
    }
}
