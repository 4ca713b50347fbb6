import Foundation
import HTTPTypes
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

/// `GET /` serves the playground: one page, self-contained, with every control labelled. What it does in a
/// browser is tested with a real Chromium in tests/clients/test_playground.py.
@Suite struct PlaygroundTests {
    static func page() async throws -> (html: String, headers: HTTPFields) {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        return try await app.test(.router) { client in
            // No key: the page asks for one.
            let response = try await client.execute(uri: "/", method: .get)
            #expect(response.status == .ok)
            return (String(buffer: response.body), response.headers)
        }
    }

    static func matches(_ pattern: String, in text: String) throws -> [[String]] {
        let regex = try NSRegularExpression(pattern: pattern, options: [.caseInsensitive])
        let range = NSRange(text.startIndex..., in: text)
        return regex.matches(in: text, range: range).map { match in
            (0..<match.numberOfRanges).map { index in
                Range(match.range(at: index), in: text).map { String(text[$0]) } ?? ""
            }
        }
    }

    @Test func servesOneHTMLPageThatNeedsNoKeyAndIsNotCachedStale() async throws {
        let (html, headers) = try await Self.page()
        #expect(headers[.contentType] == "text/html; charset=utf-8")
        #expect(headers[.cacheControl] == "no-cache")
        #expect(html.hasPrefix("<!doctype html>"))
        #expect(html.contains("<html lang=\"en\">"))
        #expect(html.contains("name=\"viewport\""), "no viewport meta: the page would not fit a phone")
        #expect(try Self.matches("<h1[ >]", in: html).count == 1)
    }

    @Test func refersToNothingOutsideThisServer() async throws {
        let (html, _) = try await Self.page()
        let references = try Self.matches(#"\s(?:src|href|action|poster)\s*=\s*"([^"]*)""#, in: html).map { $0[1] }
        #expect(!references.isEmpty)
        for reference in references {
            let local = (reference.hasPrefix("/") && !reference.hasPrefix("//")) || reference.hasPrefix("#") || reference.hasPrefix("data:")
            #expect(local, "the page refers to \(reference)")
        }
        // Its script and style fetch nothing from elsewhere either.
        for text in [PlaygroundPage.script, PlaygroundPage.style] {
            #expect(!text.contains("http://") && !text.contains("https://") && !text.contains("url("))
        }
        let fetched = try Self.matches(#"fetch\(\s*[`"']([^`"']*)"#, in: PlaygroundPage.script).map { $0[1] }
        #expect(Set(fetched) == ["/models", "/loras", "/v1/videos", "/video/stream/${job.requestId}", "/video/status", "/video/cancel"])
        #expect(!html.contains("<script src") && !html.contains("<link rel=\"stylesheet\""))
    }

    @Test func everyControlHasALabelAndEveryDescriptionExists() async throws {
        let (html, _) = try await Self.page()
        let controls = try Self.matches(#"<(input|select|textarea)\b([^>]*)>"#, in: html)
        #expect(controls.count >= 12)
        let ids = try Set(Self.matches(#"\sid="([^"]+)""#, in: html).map { $0[1] })
        let labelled = try Set(Self.matches(#"<label for="([^"]+)""#, in: html).map { $0[1] })
        for control in controls {
            let id = try #require(try Self.matches(#"\sid="([^"]+)""#, in: control[2]).first?[1], "a control without an id: \(control[0])")
            #expect(labelled.contains(id), "no <label for=\"\(id)\">")
        }
        for described in try Self.matches(#"aria-(?:describedby|labelledby)="([^"]+)""#, in: html) {
            for id in described[1].split(separator: " ") {
                #expect(ids.contains(String(id)), "aria reference to a missing id \(id)")
            }
        }
        // Status changes are announced.
        #expect(html.contains("role=\"status\" aria-live=\"polite\""))
    }

    /// The LoRA rows are made by the script from `GET /loras` (tested in a browser); the page carries their
    /// place, with the hint shown until there is a key.
    @Test func hasALoRAsFieldsetForTheScriptToFill() async throws {
        let (html, _) = try await Self.page()
        #expect(html.contains("<legend>LoRAs</legend>"))
        for id in ["lora-hint", "lora-list", "lora-count"] {
            #expect(html.contains("id=\"\(id)\""), "no #\(id)")
        }
        #expect(PlaygroundPage.script.contains(#"data.append("loras", "#))
    }

    @Test func contentSecurityPolicyAllowsOnlyThisPagesOwnScriptAndStyle() async throws {
        let (html, headers) = try await Self.page()
        let policy = try #require(headers[HTTPField.Name("Content-Security-Policy")!])
        #expect(policy.contains("default-src 'none'"))
        #expect(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval") && !policy.contains("*"))
        // The hashes are of the very text the page carries inline.
        #expect(html.contains("<script>\(PlaygroundPage.script)</script>"))
        #expect(html.contains("<style>\(PlaygroundPage.style)</style>"))
        #expect(policy.contains("script-src \(PlaygroundPage.hashSource(PlaygroundPage.script))"))
        #expect(policy.contains("style-src \(PlaygroundPage.hashSource(PlaygroundPage.style))"))
        #expect(PlaygroundPage.hashSource("abc") == "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='")
    }

    @Test func otherMethodsOnTheRootAre405() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/", method: .post)
            #expect(response.status == .methodNotAllowed)
            #expect(response.headers[.allow] == "GET")
        }
    }
}
