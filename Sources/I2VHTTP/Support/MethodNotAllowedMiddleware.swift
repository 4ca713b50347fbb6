import HTTPTypes
import Hummingbird
import I2VCore
import I2VGPUNode

/// Answers a request for a known path with a method it does not serve with 405 and `Allow` (as RFC 9110
/// and FastAPI do) instead of the router's 404. The paths and their methods come from the OpenAPI
/// document, so the contract, the routes (a contract test keeps those two equal) and this answer agree.
package struct MethodNotAllowedMiddleware<Context: RequestContext>: RouterMiddleware {
    /// Path templates as segments (`{name}` matches any one segment), with the methods each serves.
    private let operations: [(segments: [Substring], methods: [HTTPRequest.Method])]

    /// - Parameter operations: path template (e.g. `/videos/{file}`) → its methods, e.g. `["GET", "HEAD"]`.
    package init(operations: [String: [String]]) {
        self.operations = operations.map { path, methods in
            (
                path.split(separator: "/", omittingEmptySubsequences: true),
                methods.compactMap { HTTPRequest.Method($0.uppercased()) }.sorted { $0.rawValue < $1.rawValue }
            )
        }
    }

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError where error.status == .notFound {
            // Nothing served this method here; any 404 a handler gives comes from a method it does serve.
            let allowed = allowedMethods(path: request.uri.path)
            guard !allowed.isEmpty, !allowed.contains(request.method) else { throw error }
            throw APIError(
                .methodNotAllowed,
                "method \(request.method.rawValue) not allowed on \(request.uri.path)",
                headers: [.allow: allowed.map(\.rawValue).joined(separator: ", ")]
            )
        }
    }

    package func allowedMethods(path: String) -> [HTTPRequest.Method] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        var methods: [HTTPRequest.Method] = []
        for operation in operations where Self.matches(operation.segments, segments) {
            methods += operation.methods.filter { !methods.contains($0) }
        }
        return methods
    }

    private static func matches(_ template: [Substring], _ segments: [Substring]) -> Bool {
        template.count == segments.count
            && zip(template, segments).allSatisfy { pattern, segment in
                (pattern.hasPrefix("{") && pattern.hasSuffix("}")) || pattern == segment
            }
    }
}
