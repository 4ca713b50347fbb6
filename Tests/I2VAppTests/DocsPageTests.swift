import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// `/docs` renders Swagger UI from the server itself (no CDN): a headless Chromium loads the page and the
/// rendered DOM shows the three operations. A screenshot is left in `.build/docs-screenshot.png`.
@Suite(.enabled(if: DocsPage.prerequisitesMet, "needs Chromium and the Swagger UI assets (make swagger-ui)"))
struct DocsPageTests {
    @Test func swaggerUIRendersTheThreeOperationsOffline() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.live) { client in
            let url = "http://127.0.0.1:\(client.port!)/docs"
            let page = try await client.execute(uri: "/docs", method: .get)
            #expect(page.status == .ok)
            // Every script and style the page loads comes from this server.
            let html = String(buffer: page.body)
            #expect(!html.contains("http://") && !html.contains("https://"))

            let dom = try await DocsPage.chromium(["--dump-dom", url])
            for path in ["/video/submit", "/video/status", "/video/cancel"] {
                #expect(dom.contains("data-path=\"\(path)\""), "rendered docs do not show \(path)")
            }
            #expect(dom.contains("i2v-server"))
            let screenshot = repositoryRoot.appending(path: ".build/docs-screenshot.png")
            _ = try await DocsPage.chromium(["--screenshot=\(screenshot.path)", "--window-size=1280,1400", url])
            let size = (try? FileManager.default.attributesOfItem(atPath: screenshot.path)[.size] as? Int) ?? 0
            #expect(size > 10_000, "the screenshot is empty")
        }
    }
}

enum DocsPage {
    static let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    static var prerequisitesMet: Bool {
        if ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1" { return true }
        return browser != nil && FileManager.default.fileExists(atPath: repositoryRoot.appending(path: ".swagger-ui/swagger-ui-bundle.js").path)
    }

    static func chromium(_ arguments: [String]) async throws -> String {
        let browser = try #require(browser, "Chromium is not installed")
        let profile = FileManager.default.temporaryDirectory.appending(path: "i2v-chromium-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: profile) }
        let (data, _) = try await runTool(
            browser,
            [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--user-data-dir=\(profile.path)", "--virtual-time-budget=15000",
            ] + arguments)
        return String(decoding: data, as: UTF8.self)
    }
}
