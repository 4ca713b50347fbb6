import AsyncHTTPClient
import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Subprocess
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

#if canImport(System)
import System
#else
import SystemPackage
#endif

enum TestKeys {
    static let alice = "alice-test-key-0123456789"
    static let bob = "bob-test-key-9876543210"
}

/// A fresh data dir per test, removed afterwards.
struct TemporaryDirectory: ~Copyable {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appending(path: "i2v-test-\(UUID().uuidString)", directoryHint: .isDirectory)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// The service's configuration as a test sets it: in-memory values, loopback images allowed.
func testConfiguration(dataDir: URL, _ values: [String: ConfigValue] = [:]) -> ServiceConfiguration {
    var all: [AbsoluteConfigKey: ConfigValue] = [
        "i2v.host": "127.0.0.1",
        "i2v.port": 0,
        "i2v.apiKeys": .init(stringLiteral: "\(TestKeys.alice),\(TestKeys.bob)"),
        "i2v.dataDir": .init(stringLiteral: dataDir.path),
        "i2v.publicUrl": "http://localhost:8088",
        "i2v.allowPrivateImageHosts": true,
        // Generous: the tests' own image servers share two busy cores with everything else.
        "i2v.imageTimeoutSeconds": 60,
        "i2v.docsAssetsDir": .init(stringLiteral: repositoryRoot.appending(path: ".swagger-ui").path),
        "i2v.workerDir": .init(stringLiteral: repositoryRoot.appending(path: "worker").path),
        "i2v.logLevel": "warning",
        "i2v.cancelGraceSeconds": 5,
        "i2v.shutdownGraceSeconds": 0,
        // Generous for the same reason; the tests of the timeout itself set their own.
        "i2v.databaseTimeoutSeconds": 120,
    ]
    for (key, value) in values { all[AbsoluteConfigKey(key.split(separator: ".").map(String.init))] = value }
    return ServiceConfiguration(reader: ConfigReader(provider: InMemoryProvider(values: all)))
}

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

let fixtureImage: [UInt8] = {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appending(path: "Fixtures/landscape-320x180.png")
    return Array((try? Data(contentsOf: url)) ?? Data())
}()

/// A loopback HTTP server that serves the fixture image (and whatever else a test adds), so submits
/// download a real image over real HTTP.
func withImageServer<T: Sendable>(
    _ configure: @Sendable (Router<BasicRequestContext>) -> Void = { _ in },
    _ body: @Sendable (_ baseURL: String) async throws -> T
) async throws -> T {
    let router = Router()
    router.get("image.png") { _, _ in
        Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: fixtureImage)))
    }
    configure(router)
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    return try await app.test(.live) { client in
        try await body("http://127.0.0.1:\(client.port!)")
    }
}

extension TestResponse {
    /// The reason of the service's JSON error body (`{"detail":{"reason":…}}`); empty when there is none.
    func reason() -> String {
        (((try? jsonObject())?["detail"] as? [String: Any])?["reason"] as? String) ?? ""
    }
}

extension TestClientProtocol {
    @discardableResult
    func post(_ path: String, key: String? = TestKeys.alice, json: String) async throws -> TestResponse {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let key { headers[.authorization] = "Bearer \(key)" }
        return try await execute(uri: path, method: .post, headers: headers, body: ByteBuffer(string: json))
    }

    /// Submits a job and returns its id; a refused submit ends the test here (nothing to poll).
    func submit(
        imageURL: String,
        key: String = TestKeys.alice,
        extra: String = "",
        frames: Int = 24,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> String {
        let response = try await post(
            "/video/submit",
            key: key,
            json: #"{"image_url":"\#(imageURL)","prompt":"A dancing cat in the style of Van Gogh","infer_steps":20,"num_frames":\#(frames)\#(extra)}"#
        )
        try #require(
            response.status == .accepted,
            "submit answered \(response.status): \(String(buffer: response.body))",
            sourceLocation: sourceLocation
        )
        return try #require(try response.jsonObject()["requestId"] as? String, sourceLocation: sourceLocation)
    }

    func status(_ id: String, key: String = TestKeys.alice, sourceLocation: SourceLocation = #_sourceLocation) async throws -> [String: Any] {
        let response = try await post("/video/status", key: key, json: #"{"requestId":"\#(id)"}"#)
        try #require(response.status == .ok, "status answered \(response.status): \(String(buffer: response.body))", sourceLocation: sourceLocation)
        return try response.jsonObject()
    }

    /// Polls until the task reaches `status` (or any terminal state) and returns the last status body.
    /// A wait that runs out records one issue with the last state seen; the caller's own checks on the
    /// returned body then say what was expected.
    func waitFor(
        _ id: String,
        status wanted: String,
        key: String = TestKeys.alice,
        timeout: Duration = .seconds(120),
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let body = try await status(id, key: key, sourceLocation: sourceLocation)
            let current = body["status"] as? String ?? ""
            if current == wanted || ["Succeed", "Failed", "Cancelled"].contains(current) {
                return body
            }
            if ContinuousClock.now > deadline {
                Issue.record("task \(id) did not reach \(wanted) within \(timeout); last state: \(body)", sourceLocation: sourceLocation)
                return body
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// Polls `condition` until it holds; one that never does records a single issue naming `what`.
@discardableResult
func eventually(
    _ what: String,
    timeout: Duration = .seconds(120),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        if ContinuousClock.now > deadline {
            Issue.record("\(what) did not happen within \(timeout)", sourceLocation: sourceLocation)
            return false
        }
        try? await Task.sleep(for: .milliseconds(20))
    }
}

extension TestResponse {
    func jsonObject() throws -> [String: Any] {
        (try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]) ?? [:]
    }

    var failureReason: String? {
        guard let object = try? jsonObject(), let detail = object["detail"] as? [String: Any] else { return nil }
        return detail["reason"] as? String
    }

    var validationIssues: [[String: Any]] {
        guard let object = try? jsonObject() else { return [] }
        return object["detail"] as? [[String: Any]] ?? []
    }
}

/// Builds the app with a fake worker and the given settings.
func makeTestApp(
    dataDir: URL, worker: FakeWorker, role: NodeRole = .serve, model: String = "test-model", experts: Int = 1,
    _ values: [String: ConfigValue] = [:]
) async throws -> some ApplicationProtocol {
    let served = ServedModel(id: model, nativeArea: 15_360, experts: experts)
    await worker.setModel(served)
    return try await buildApplication(
        configuration: testConfiguration(dataDir: dataDir, values),
        role: role,
        overrides: AppOverrides(worker: worker, catalog: ModelCatalog(models: [served]))
    )
}

/// Runs a tool (ffmpeg, ffprobe, Chromium) and returns its standard output; its stderr is discarded.
/// It never blocks a thread of the cooperative pool while the tool runs: that pool has one thread per
/// core, and the in-process servers the tool may talk to (and every other test) need those threads.
func runTool(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> (output: Data, status: Int32) {
    let result = try await Subprocess.run(
        .path(FilePath(executable)),
        arguments: Arguments(arguments),
        environment: .inherit.updating(environment.reduce(into: [:]) { $0[.init(stringLiteral: $1.key)] = $1.value }),
        output: .data(limit: 256 * 1024 * 1024),
        error: .discarded
    )
    return (result.standardOutput, result.terminationStatus.shellCode)
}

extension TerminationStatus {
    /// As a shell reports it: the exit code, or 128 + the signal that ended the process.
    var shellCode: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }
}
