import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import I2VOpenAPI
import ImageIntake
import Logging
import NIOCore
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The OpenAPI document is the contract: the served routes, the document and the worker protocol agree.
@Suite struct ContractTests {
    /// Routes the router serves, as "METHOD /path" with `{name}` captures.
    static func servedRoutes() async throws -> Set<String> {
        let directory = try TemporaryDirectory()
        let parts = try await buildNode(
            configuration: testConfiguration(dataDir: directory.url),
            overrides: AppOverrides(
                worker: FakeWorker(model: ServedModel(id: "m", nativeArea: 15_360)), catalog: ModelCatalog(models: [ServedModel(id: "m", nativeArea: 15_360)]))
        )
        let router = parts.router
        var routes = Set(
            router.routes.map { route in
                let path = route.path.components.map { component -> String in
                    let text = "\(component)"
                    return text.hasPrefix(":") ? "{\(text.dropFirst())}" : text
                }.joined(separator: "/")
                return "\(route.method.rawValue) /\(path)"
            })
        // Served by the file middlewares rather than routes.
        routes.formUnion(["GET /videos/{file}", "HEAD /videos/{file}", "GET /docs/{asset}"])
        // Our own initializer script is one of the docs assets.
        routes.remove("GET /docs/swagger-initializer.js")
        return routes
    }

    static func documentedRoutes() throws -> Set<String> {
        let paths = try #require(try OpenAPIDocument.object()["paths"] as? [String: [String: Any]])
        var routes = Set<String>()
        for (path, operations) in paths {
            for method in operations.keys where ["get", "post", "head", "put", "delete", "patch"].contains(method) {
                routes.insert("\(method.uppercased()) \(path)")
            }
        }
        return routes
    }

    @Test func everyServedRouteIsDocumentedAndEveryDocumentedRouteIsServed() async throws {
        let served = try await Self.servedRoutes()
        let documented = try Self.documentedRoutes()
        #expect(served.subtracting(documented).isEmpty, "served but not in openapi.yaml: \(served.subtracting(documented))")
        #expect(documented.subtracting(served).isEmpty, "in openapi.yaml but not served: \(documented.subtracting(served))")
    }

    @Test func everyDocumentedRouteAnswers() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        let videoName = String(repeating: "ab", count: 16)
        try FileManager.default.createDirectory(at: directory.url.appending(path: "videos"), withIntermediateDirectories: true)
        try Data("x".utf8).write(to: directory.url.appending(path: "videos/\(videoName).mp4"))
        let hasDocs = FileManager.default.fileExists(atPath: repositoryRoot.appending(path: ".swagger-ui/swagger-ui-bundle.js").path)
        try await app.test(.router) { client in
            for route in try Self.documentedRoutes().sorted() {
                let parts = route.split(separator: " ", maxSplits: 1)
                let method = HTTPRequest.Method(rawValue: String(parts[0]))!
                let path = String(parts[1])
                    .replacingOccurrences(of: "{file}", with: "\(videoName).mp4")
                    .replacingOccurrences(of: "{asset}", with: "swagger-ui.css")
                let response: TestResponse
                if method == .post {
                    response = try await client.post(path, json: #"{"requestId":"\#(String(repeating: "0", count: 32))"}"#)
                } else {
                    response = try await client.execute(uri: path, method: method)
                }
                if path.hasPrefix("/docs") && !hasDocs { continue }
                // Each answers with one of the statuses the document lists for it (never an unlisted 404/405/500).
                let document = try OpenAPIDocument.object()
                let operation = ((document["paths"] as? [String: Any])?[String(parts[1])] as? [String: Any])?[String(parts[0]).lowercased()] as? [String: Any]
                let listed = Set(((operation?["responses"] as? [String: Any]) ?? [:]).keys)
                #expect(listed.contains(String(response.status.code)), "\(route) answered \(response.status.code), listed \(listed)")
            }
        }
    }

    /// A documented path asked with a method it does not serve is 405 with `Allow` listing the ones it does
    /// (from the document), in the service's error body; an unknown path stays 404.
    @Test func aWrongMethodOnAKnownPathIs405WithAllow() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        let video = "/videos/\(String(repeating: "ab", count: 16)).mp4"
        try await app.test(.router) { client in
            for (method, path, allow) in [
                (HTTPRequest.Method.get, "/video/submit", "POST"),
                (.delete, "/video/status", "POST"),
                (.put, "/video/cancel", "POST"),
                (.post, "/health", "GET"),
                (.delete, "/models", "GET"),
                (.post, video, "GET, HEAD"),
                (.delete, "/openapi.json", "GET"),
            ] {
                let response = try await client.execute(uri: path, method: method, headers: [.authorization: "Bearer \(TestKeys.alice)"])
                #expect(response.status == .methodNotAllowed, "\(method) \(path): \(response.status)")
                #expect(response.headers[.allow] == allow, "\(method) \(path)")
                let detail = try response.jsonObject()["detail"] as? [String: Any]
                #expect(detail?["status"] as? String == "Failed", "\(method) \(path)")
                #expect((detail?["reason"] as? String)?.contains("not allowed") == true, "\(method) \(path)")
            }
            #expect(try await client.execute(uri: "/no/such/path", method: .get).status == .notFound)
            #expect(try await client.execute(uri: "/videos/not-a-video.txt", method: .get).status == .notFound)
            // A handler's own 404 is untouched.
            let unknown = try await client.post("/video/status", json: #"{"requestId":"\#(String(repeating: "0", count: 32))"}"#)
            #expect(unknown.status == .notFound)
        }
    }

    /// The submit example in the served document is accepted by the server that serves it (only the image
    /// URL is pointed at a reachable image): whatever it names must be something this server serves.
    @Test func theServedSubmitExampleIsAcceptedAsItStands() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let document = try JSONSerialization.jsonObject(with: Data(buffer: try await client.execute(uri: "/openapi.json", method: .get).body))
                let submit = ((document as? [String: Any])?["paths"] as? [String: Any])?["/video/submit"] as? [String: Any]
                let content = ((submit?["post"] as? [String: Any])?["requestBody"] as? [String: Any])?["content"] as? [String: Any]
                var example = try #require((content?["application/json"] as? [String: Any])?["example"] as? [String: Any])
                example["image_url"] = "\(base)/image.png"
                let body = String(decoding: try JSONSerialization.data(withJSONObject: example), as: UTF8.self)
                let response = try await client.post("/video/submit", json: body)
                #expect(response.status == .accepted, "\(String(buffer: response.body))")
            }
        }
    }

    @Test func servedDocumentIsTheYamlContract() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/openapi.json", method: .get)
            #expect(response.status == .ok)
            let served = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? NSDictionary
            let yaml = try OpenAPIDocument.object() as NSDictionary
            #expect(served == yaml)
            #expect((served?["openapi"] as? String)?.hasPrefix("3.1") == true)
        }
    }

    /// The README names every route of the document.
    @Test func readmeNamesEveryOperation() throws {
        let readme = try String(contentsOf: repositoryRoot.appending(path: "README.md"), encoding: .utf8)
        for route in try Self.documentedRoutes() where !route.hasPrefix("HEAD") {
            let path = String(route.split(separator: " ")[1])
                .replacingOccurrences(of: "{file}", with: "")
                .replacingOccurrences(of: "{asset}", with: "")
            #expect(readme.contains(path), "README.md does not mention \(path)")
        }
    }

    @Test func workerProtocolFixturesRoundTrip() throws {
        let fixtures = repositoryRoot.appending(path: "worker/protocol/fixtures.jsonl")
        let lines = try String(contentsOf: fixtures, encoding: .utf8).split(whereSeparator: \.isNewline)
        #expect(lines.count >= 10)
        var kinds = Set<String>()
        for line in lines {
            let entry = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let message = try JSONSerialization.data(withJSONObject: entry["message"]!)
            let original = try JSONSerialization.jsonObject(with: message) as? NSDictionary
            let encoded: Data
            if entry["direction"] as? String == "from_worker" {
                encoded = try JSONEncoder().encode(try JSONDecoder().decode(WorkerEvent.self, from: message))
            } else {
                encoded = try JSONEncoder().encode(try JSONDecoder().decode(WorkerCommand.self, from: message))
            }
            let roundTripped = try JSONSerialization.jsonObject(with: encoded) as? NSDictionary
            #expect(roundTripped == original, "\(entry["name"] ?? "")")
            kinds.insert((original?["type"] as? String) ?? "")
        }
        #expect(kinds == ["ready", "progress", "done", "error", "fatal", "run", "cancel", "shutdown"])
    }
}
