import Foundation
import Hummingbird
import I2VOpenAPI
import NIOCore
import I2VCore
import I2VGPUNode

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
