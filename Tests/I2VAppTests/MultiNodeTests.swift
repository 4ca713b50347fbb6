import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Subprocess
import Synchronization
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

/// Several nodes as an operator runs them: two `i2v-server api` and two `i2v-server worker` processes (the
/// built binary, the demo model on the CPU) on one PostgreSQL database and one data dir. The processes are
/// real so that they can be killed for real; one set of them serves every case, in order.
@Suite(
    .serialized,
    .enabled(
        if: (EndToEnd.python != nil && TestCluster.url != nil) || TestCluster.strict,
        "needs the worker's Python environment and the test PostgreSQL cluster (make test starts one)"
    )
)
struct MultiNodeTests {
    @Test func twoAPINodesAndTwoWorkerNodesShareOneQueue() async throws {
        let python = try #require(EndToEnd.python, "the worker's Python environment is missing (make python-env)")
        let binary = repositoryRoot.appending(path: ".build/debug/i2v-server")
        try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build the server first (swift build)")
        let checkpoint = try await EndToEnd.checkpoint(python: python)
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let shared = try TemporaryDirectory()
            try await withImageServer { imageBase in
                let cluster = Cluster(binary: binary, dataDir: shared.url, databaseURL: url, checkpoint: checkpoint, python: python)
                defer { cluster.stopAll() }
                try await cluster.exercise(imageBase: imageBase)
            }
        }
    }
}

/// One node process, started through swift-subprocess. (Foundation's `Process.run` over-reads a directory
/// entry of /proc/self/fd on Linux and crashed this test process now and then, with many descriptors open.)
private final class NodeProcess: Sendable {
    let pid: pid_t
    private let status = Mutex<Int32?>(nil)

    init(pid: pid_t) { self.pid = pid }

    /// The exit status (128 + the signal for a killed process) once it has exited; nil while it runs.
    var exitStatus: Int32? { status.withLock { $0 } }
    func exited(_ code: Int32) { status.withLock { $0 = code } }
}

/// The nodes of one test, and the cases run against them.
private final class Cluster: Sendable {
    let binary: URL
    let dataDir: URL
    let databaseURL: String
    let checkpoint: String
    let python: String
    private struct Nodes {
        var processes: [String: NodeProcess] = [:]
        var ports: [String: Int] = [:]
    }
    private let nodes = Mutex(Nodes())

    init(binary: URL, dataDir: URL, databaseURL: String, checkpoint: String, python: String) {
        self.binary = binary
        self.dataDir = dataDir
        self.databaseURL = databaseURL
        self.checkpoint = checkpoint
        self.python = python
    }

    func exercise(imageBase: String) async throws {
        for name in ["api-1", "api-2"] { try await start(name, role: "api") }
        for name in ["worker-1", "worker-2"] { try await start(name, role: "worker") }
        for name in ["api-1", "api-2", "worker-1", "worker-2"] { try await waitUntilReady(name) }

        // The Python worker does not inherit its node's secrets (API keys, database URL), and runs this
        // checkout's worker code, not whatever the shared venv has installed. Read from a real node process:
        // a test that set them in its own environment would race with the processes other tests start.
        let ready = try await get("worker-1", "/ready")
        let pid = try #require(ready.body["worker_pid"] as? Int, "\(ready.body)")
        let environment = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ")), as: UTF8.self)
        #expect(environment.contains("I2V_MODEL_PATH="), "read the worker's environment")
        #expect(!environment.contains(TestKeys.alice) && !environment.contains(databaseURL))
        #expect(environment.contains("PYTHONPATH=\(repositoryRoot.appending(path: "worker").path)"))

        // Jobs submitted through both API nodes all succeed, and both worker nodes ran some of them.
        var ids: [String] = []
        for index in 0..<4 {
            ids.append(try await submit(through: index.isMultiple(of: 2) ? "api-1" : "api-2", imageBase: imageBase, steps: 20))
        }
        for (index, id) in ids.enumerated() {
            // Read through the API node that did not take the submit.
            let done = try await waitForEnd(id, through: index.isMultiple(of: 2) ? "api-2" : "api-1")
            #expect(done["status"] as? String == "Succeed", "\(done)")
        }
        let succeeded = try await ["worker-1", "worker-2"].asyncMap { try await self.succeededCount(on: $0) }
        #expect(succeeded.allSatisfy { $0 >= 1 } && succeeded.reduce(0, +) == 4, "jobs succeeded per worker node: \(succeeded)")

        // A cancel sent to the API node that did not take the submit stops the running task.
        let long = try await submit(through: "api-1", imageBase: imageBase, steps: 100, frames: 81)
        try await waitForStep(long, through: "api-2", atLeast: 1)
        let cancel = try await post("api-2", "/video/cancel", #"{"requestId":"\#(long)"}"#)
        #expect(cancel.status == 200, "\(cancel.body)")
        let cancelled = try await waitForEnd(long, through: "api-1")
        #expect(cancelled["status"] as? String == "Cancelled", "\(cancelled)")

        // SIGTERM drains a worker node: its running job goes back to the queue (no attempt counted) and the
        // other node runs it; the node exits cleanly and, restarted under its name, takes work again.
        let drained = try await submit(through: "api-1", imageBase: imageBase, steps: 60, frames: 81)
        try await waitForStep(drained, through: "api-1", atLeast: 1)
        let draining = try #require(try await nodeRunning(drained), "a worker node lists the running task in /ready")
        kill(draining, signal: SIGTERM)
        let exitStatus = try await waitForExit(draining)
        #expect(exitStatus == 0, "\(draining) exited with \(exitStatus)")
        let afterDrain = try await waitForEnd(drained, through: "api-2")
        #expect(afterDrain["status"] as? String == "Succeed", "\(afterDrain)")
        try await start(draining, role: "worker")
        try await waitUntilReady(draining)

        // kill -9 of the worker node running a job: its lease runs out and the other node finishes the job.
        let survivor = try await submit(through: "api-2", imageBase: imageBase, steps: 60, frames: 81)
        try await waitForStep(survivor, through: "api-1", atLeast: 1)
        let holder = try #require(try await nodeRunning(survivor), "a worker node lists the running task in /ready")
        let other = holder == "worker-1" ? "worker-2" : "worker-1"
        let before = try await succeededCount(on: other)
        kill(holder, signal: SIGKILL)
        let finished = try await waitForEnd(survivor, through: "api-1")
        #expect(finished["status"] as? String == "Succeed", "\(finished)")
        #expect(try await succeededCount(on: other) == before + 1, "the task finished on \(other)")

        // kill -9 of an API node: the other still answers for every task, wherever it was submitted.
        kill("api-1", signal: SIGKILL)
        for id in ids + [long, survivor] {
            let status = try await post("api-2", "/video/status", #"{"requestId":"\#(id)"}"#)
            #expect(status.status == 200 && ["Succeed", "Cancelled"].contains(status.body["status"] as? String ?? ""), "\(id): \(status.body)")
        }
        // And serves a video another node's worker wrote to the shared data dir.
        let last = try await post("api-2", "/video/status", #"{"requestId":"\#(survivor)"}"#)
        let videoURL = try #require((((last.body["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"]) as? String)
        let path = String(videoURL.drop { $0 != "/" }.dropFirst(2).drop { $0 != "/" })
        let video = try await get("api-2", path)
        #expect(video.status == 200 && video.bytes > 1000, "GET \(path) answered \(video.status)")
    }

    // MARK: Processes

    func start(_ name: String, role: String) async throws {
        let settings: [String: String] = [
            "I2V_HOST": "127.0.0.1",
            // Port 0: the node takes a free port itself and logs it (`port(_:)` reads it there). A port chosen here
            // could be taken by a connection of a test running beside this one before the node binds it.
            "I2V_PORT": "0",
            "I2V_NODE_ID": name,
            "I2V_DATA_DIR": dataDir.path,
            "I2V_DATABASE_URL": databaseURL,
            "I2V_API_KEYS": TestKeys.alice,
            "I2V_MODEL_PATH": checkpoint,
            "I2V_PYTHON": python,
            "I2V_WORKER_DIR": repositoryRoot.appending(path: "worker").path,
            "I2V_DOCS_ASSETS_DIR": repositoryRoot.appending(path: ".swagger-ui").path,
            "I2V_DEVICES": "cpu",
            "I2V_MAX_CONCURRENT": "1",
            "I2V_ALLOW_PRIVATE_IMAGE_HOSTS": "true",
            "I2V_IMAGE_TIMEOUT_SECONDS": "60",
            // Short enough that the kill -9 case ends soon; the heartbeat renews three times a lease.
            "I2V_LEASE_SECONDS": "10",
            // On SIGTERM running jobs go straight back to the queue.
            "I2V_SHUTDOWN_GRACE_SECONDS": "0",
            "I2V_DATABASE_TIMEOUT_SECONDS": "120",
            "I2V_LOG_LEVEL": "info",
        ]
        let log = dataDir.appending(path: "\(name).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        let output = FileDescriptor(rawValue: handle.fileDescriptor)
        let binary = binary
        let (spawned, spawn) = AsyncStream.makeStream(of: NodeProcess.self)
        // Runs until the process has exited; the body only hands out its pid.
        Task {
            defer {
                spawn.finish()
                try? handle.close()
            }
            var node: NodeProcess?
            var code: Int32 = -1
            do {
                let result = try await Subprocess.run(
                    .path(FilePath(binary.path)),
                    arguments: [role],
                    environment: .inherit.updating(settings.reduce(into: [:]) { $0[.init(stringLiteral: $1.key)] = $1.value }),
                    input: .none,
                    output: .fileDescriptor(output, closeAfterSpawningProcess: false),
                    error: .fileDescriptor(output, closeAfterSpawningProcess: false)
                ) { execution in
                    node = NodeProcess(pid: execution.processIdentifier.value)
                    spawn.yield(node!)
                }
                code = result.terminationStatus.shellCode
            } catch {
                Issue.record("\(name): \(error)")
            }
            node?.exited(code)
        }
        var started = spawned.makeAsyncIterator()
        let node = try #require(await started.next(), "\(name) did not start")
        nodes.withLock {
            $0.processes[name] = node
            $0.ports[name] = nil
        }
    }

    /// The node's exit status once it has exited (it is expected to, soon).
    func waitForExit(_ name: String) async throws -> Int32 {
        let node = try #require(nodes.withLock { $0.processes[name] })
        let exited = await eventually("\(name) exiting") { node.exitStatus != nil }
        try #require(exited, "\(name) log:\n\(logTail(name))")
        return node.exitStatus ?? -1
    }

    func kill(_ name: String, signal: Int32) {
        guard let node = nodes.withLock({ $0.processes[name] }), node.exitStatus == nil else { return }
        Foundation.kill(node.pid, signal)
    }

    func stopAll() {
        for node in nodes.withLock({ Array($0.processes.values) }) where node.exitStatus == nil {
            Foundation.kill(node.pid, SIGKILL)
        }
    }

    /// The port the node listens on, from its log once it says so; 0 (which no connection reaches) until then.
    private func port(_ name: String) -> Int {
        if let known = nodes.withLock({ $0.ports[name] }) { return known }
        let marker = "Server started and listening on 127.0.0.1:"
        let text = (try? String(contentsOf: dataDir.appending(path: "\(name).log"), encoding: .utf8)) ?? ""
        guard let line = text.split(separator: "\n").last(where: { $0.contains(marker) }),
            let port = Int(line.split(separator: marker).last?.prefix { $0.isNumber } ?? "")
        else { return 0 }
        nodes.withLock { $0.ports[name] = port }
        return port
    }

    private func logTail(_ name: String) -> String {
        let text = (try? String(contentsOf: dataDir.appending(path: "\(name).log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    // MARK: HTTP

    struct Answer {
        var status: UInt
        var body: [String: Any]
        var bytes: Int
    }

    func post(_ node: String, _ path: String, _ json: String) async throws -> Answer {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port(node))\(path)")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Authorization", value: "Bearer \(TestKeys.alice)")
        request.body = .bytes(ByteBuffer(string: json))
        return try await send(request)
    }

    func get(_ node: String, _ path: String) async throws -> Answer {
        try await send(HTTPClientRequest(url: "http://127.0.0.1:\(port(node))\(path)"))
    }

    private func send(_ request: HTTPClientRequest) async throws -> Answer {
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 64 * 1024 * 1024)
        let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
        return Answer(status: response.status.code, body: object, bytes: body.readableBytes)
    }

    // MARK: Waiting

    func waitUntilReady(_ node: String) async throws {
        let ready = await eventually("\(node) ready") {
            (try? await self.get(node, "/ready"))?.status == 200
        }
        if !ready { Issue.record("\(node) log:\n\(logTail(node))") }
    }

    /// Short jobs for the sharing case; long ones (81 frames) where a case must catch the job running.
    func submit(through node: String, imageBase: String, steps: Int, frames: Int = 24) async throws -> String {
        let answer = try await post(
            node,
            "/video/submit",
            #"{"image_url":"\#(imageBase)/image.png","prompt":"A dancing cat in the style of Van Gogh","infer_steps":\#(steps),"num_frames":\#(frames)}"#
        )
        try #require(answer.status == 202, "submit through \(node) answered \(answer.status): \(answer.body)")
        return try #require(answer.body["requestId"] as? String)
    }

    /// Polls until the task has ended; a wait that runs out records one issue with the last state.
    func waitForEnd(_ id: String, through node: String) async throws -> [String: Any] {
        var last: [String: Any] = [:]
        _ = await eventually("task \(id) ending") {
            guard let answer = try? await self.post(node, "/video/status", #"{"requestId":"\#(id)"}"#) else { return false }
            last = answer.body
            return ["Succeed", "Failed", "Cancelled"].contains(answer.body["status"] as? String ?? "")
        }
        return last
    }

    func waitForStep(_ id: String, through node: String, atLeast step: Int) async throws {
        var last: [String: Any] = [:]
        let reached = await eventually("task \(id) reaching step \(step)") {
            guard let answer = try? await self.post(node, "/video/status", #"{"requestId":"\#(id)"}"#) else { return false }
            last = answer.body
            return EndToEnd.step(answer.body) >= step || answer.body["status"] as? String != "InQueue" && answer.body["status"] as? String != "InProgress"
        }
        try #require(reached && last["status"] as? String == "InProgress", "last state: \(last)")
    }

    /// Which worker node's /ready lists the task among its workers' running tasks.
    func nodeRunning(_ id: String) async throws -> String? {
        for node in ["worker-1", "worker-2"] {
            let ready = try await get(node, "/ready")
            let workers = ready.body["workers"] as? [[String: Any]] ?? []
            if workers.contains(where: { ($0["tasks"] as? [String] ?? []).contains(id) }) { return node }
        }
        return nil
    }

    /// The worker node's own count of the tasks it finished successfully, from its /metrics.
    func succeededCount(on node: String) async throws -> Int {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port(node))/metrics"), timeout: .seconds(60))
        let text = String(buffer: try await response.body.collect(upTo: 4 * 1024 * 1024))
        for line in text.split(separator: "\n") where line.hasPrefix("i2v_task_outcomes_total") && line.contains(#"status="Succeed""#) {
            if let value = line.split(separator: " ").last.flatMap({ Double($0) }) { return Int(value) }
        }
        return 0
    }
}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var mapped: [T] = []
        for element in self { mapped.append(try await transform(element)) }
        return mapped
    }
}
