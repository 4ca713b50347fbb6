import Foundation
import Hummingbird
import I2VCore
import I2VGPUNode
import I2VOpenAPI
import Logging
import NIOCore

/// `/openapi.json` (the contract in `openapi.yaml`, as JSON) and `/docs` (Swagger UI served from the
/// server itself, so the docs work offline; its assets come from `make swagger-ui`).
package struct DocsController: Sendable {
    package let document: [UInt8]
    package let assetsDirectory: URL

    package init(assetsDirectory: URL) throws {
        self.document = try OpenAPIDocument.json()
        self.assetsDirectory = assetsDirectory
    }

    package func addRoutes(to router: Router<AppRequestContext>) {
        router.get("openapi.json") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: document))
            )
        }
        router.get("docs/swagger-initializer.js") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "application/javascript; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: Self.initializer))
            )
        }
        router.get("docs") { _, _ in
            guard FileManager.default.fileExists(atPath: assetsDirectory.appending(path: "swagger-ui-bundle.js").path) else {
                throw APIError(.serviceUnavailable, "Swagger UI assets are not installed in \(assetsDirectory.path); run `make swagger-ui`")
            }
            return Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: Self.page))
            )
        }
    }

    /// Swagger UI's files under `/docs/`, from `assetsDirectory`.
    package func assetsMiddleware(logger: Logger) -> DocsAssetsMiddleware {
        DocsAssetsMiddleware(
            files: FileMiddleware(assetsDirectory.path, urlBasePath: "/docs", searchForIndexHtml: false, logger: logger)
        )
    }

    package static let initializer = """
        window.onload = function () {
          window.ui = SwaggerUIBundle({
            url: "/openapi.json",
            dom_id: "#swagger-ui",
            deepLinking: true,
            presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
            plugins: [SwaggerUIBundle.plugins.DownloadUrl],
            layout: "StandaloneLayout"
          });
        };
        """

    package static let page = """
        <!doctype html>
        <html lang="en">
        <head>
          <meta charset="utf-8">
          <title>i2v-server API</title>
          <link rel="stylesheet" href="/docs/swagger-ui.css">
          <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
        </head>
        <body>
          <div id="swagger-ui"></div>
          <script src="/docs/swagger-ui-bundle.js"></script>
          <script src="/docs/swagger-ui-standalone-preset.js"></script>
          <script src="/docs/swagger-initializer.js"></script>
        </body>
        </html>
        """
}

/// Hands only `/docs/…` paths that can name a file to Hummingbird's FileMiddleware. That middleware looks
/// at every request the router answers 404, and answers 400 itself for a path holding `..` or broken
/// percent-encoding, before it even checks the `/docs` prefix. Such a path names no asset (and, outside
/// `/docs`, no route): it goes on to the router and ends in the 404 the contract lists.
package struct DocsAssetsMiddleware: RouterMiddleware {
    package let files: FileMiddleware<AppRequestContext, LocalFileSystem>

    package func handle(
        _ request: Request,
        context: AppRequestContext,
        next: (Request, AppRequestContext) async throws -> Response
    ) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/docs/"), let decoded = path.removingPercentEncoding, !decoded.contains("..") else {
            return try await next(request, context)
        }
        return try await files.handle(request, context: context, next: next)
    }
}
