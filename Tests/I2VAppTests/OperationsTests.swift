import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import I2VApp

/// `/ready` and `/docs/…` over real HTTP, as a load balancer or a contract checker sees them.
@Suite struct OperationsTests {
    /// A node whose worker is still loading says when to look again, so pollers back off.
    @Test func notReadyIs503WithRetryAfter() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/ready", method: .get)
            #expect(response.status == .serviceUnavailable)
            let retryAfter = try #require(response.headers[.retryAfter], "no Retry-After on \(String(buffer: response.body))")
            #expect((Int(retryAfter) ?? 0) >= 1, "Retry-After: \(retryAfter)")
            #expect(!response.reason().isEmpty)
        }
    }

    /// A `/docs/…` path that cannot name a file (`..`, broken percent-encoding) names no asset: 404, as the
    /// contract lists, never an undocumented 400; the same for such paths elsewhere. Real assets still load.
    @Test func docsPathsThatNameNoAssetAre404() async throws {
        let directory = try TemporaryDirectory()
        let assets = directory.url.appending(path: "swagger-ui")
        try FileManager.default.createDirectory(at: assets, withIntermediateDirectories: true)
        try Data("body { margin: 0 }".utf8).write(to: assets.appending(path: "swagger-ui.css"))
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.docsAssetsDir": .init(stringLiteral: assets.path)])
        try await app.test(.live) { client in
            let css = try await client.execute(uri: "/docs/swagger-ui.css", method: .get)
            #expect(css.status == .ok)
            #expect(String(buffer: css.body) == "body { margin: 0 }")
            for path in ["/docs/%ZZ", "/docs/swagger-ui.css%", "/docs/..%2Fswagger-ui.css", "/docs/%2e%2e/x", "/docs/a..b", "/nowhere/%ZZ"] {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .notFound, "\(path): \(response.status) \(String(buffer: response.body))")
                #expect(!response.reason().isEmpty, "\(path): the service's error body")
            }
        }
    }
}
