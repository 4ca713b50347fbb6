import Hummingbird

/// Only names of the form `<32 lowercase hex>.mp4` reach the video directory: anything else under
/// `/videos/` is 404 before the file middleware sees it (no traversal, no temporary files).
struct VideoFileGuard<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path.hasPrefix("/videos") {
            let name = path.dropFirst("/videos".count)
            guard name.hasPrefix("/"), name.hasSuffix(".mp4"), RandomIdentifier.isHex128(name.dropFirst().dropLast(4)) else {
                throw APIError(.notFound, "video not found")
            }
        }
        return try await next(request, context)
    }
}
