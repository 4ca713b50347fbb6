import AsyncHTTPClient
import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
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

/// The real thing: the service over real HTTP, the supervised Python worker running the diffusers
/// pipeline on the demo checkpoint, real ffmpeg, checked with ffprobe.
@Suite(
    .serialized,
    .enabled(
        if: EndToEnd.python != nil || ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1",
        "needs the worker's Python environment (make python-env) and ffprobe"))
struct EndToEndTests {
    @Test func submitSucceedsAndTheVideoIsARealMP4() async throws {
        try await EndToEnd.withService { client, _, imageBase in
            let id = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","seed":7"#, frames: 24)
            let done = try await client.waitFor(id, status: "Succeed", timeout: .seconds(120))
            #expect(done["status"] as? String == "Succeed", "\(done)")
            let results = try #require(done["results"] as? [String: Any])
            #expect(results["seed"] as? Int == 7)
            #expect(results["num_frames"] as? Int == 25)
            let url = try #require(((results["videos"] as? [[String: Any]])?.first?["url"]) as? String)
            let response = try await client.execute(uri: String(url.dropFirst("http://localhost:8088".count)), method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "video/mp4")
            let file = FileManager.default.temporaryDirectory.appending(path: "e2e-\(id).mp4")
            defer { try? FileManager.default.removeItem(at: file) }
            try Data(buffer: response.body).write(to: file)
            let probe = try await EndToEnd.ffprobe(file)
            #expect(probe.width == results["width"] as? Int)
            #expect(probe.height == results["height"] as? Int)
            #expect(probe.frames == 25)
            #expect(probe.fps == "16/1")
            #expect(probe.codec == "h264" && probe.pixelFormat == "yuv420p")
            // +faststart: the moov atom comes before mdat, so a browser can start playing early.
            let bytes = Data(buffer: response.body)
            let moov = bytes.range(of: Data("moov".utf8))?.lowerBound
            let mdat = bytes.range(of: Data("mdat".utf8))?.lowerBound
            #expect(moov != nil && mdat != nil && moov! < mdat!)
        }
    }

    @Test func twoJobsRunAtTheSameTime() async throws {
        try await EndToEnd.withService(["i2v.maxConcurrent": 2]) { client, _, imageBase in
            let a = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":60"#, frames: 48)
            let b = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":60"#, frames: 48)
            var together = false
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                let sa = try await client.status(a), sb = try await client.status(b)
                let stepA = (sa["progress"] as? [String: Any])?["step"] as? Int ?? 0
                let stepB = (sb["progress"] as? [String: Any])?["step"] as? Int ?? 0
                if stepA > 0 && stepB > 0 { together = true }
                if sa["status"] as? String == "Succeed" && sb["status"] as? String == "Succeed" { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(together, "both jobs reported progress at the same time")
            #expect(try await client.status(a)["status"] as? String == "Succeed")
            #expect(try await client.status(b)["status"] as? String == "Succeed")
        }
    }

    @Test func cancellingARunningJobStopsItAndFreesTheSlot() async throws {
        try await EndToEnd.withService(["i2v.maxConcurrent": 1]) { client, _, imageBase in
            let long = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":100"#, frames: 120)
            let next = try await client.submit(imageURL: "\(imageBase)/image.png")
            try await EndToEnd.waitForStep(client, long, atLeast: 2)
            #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(long)"}"#).status == .ok)
            let cancelled = try await client.waitFor(long, status: "Cancelled", timeout: .seconds(30))
            #expect(cancelled["status"] as? String == "Cancelled")
            let step = (cancelled["progress"] as? [String: Any])?["step"] as? Int
            #expect(step == nil)
            #expect(try await client.waitFor(next, status: "Succeed", timeout: .seconds(120))["status"] as? String == "Succeed")
        }
    }

    @Test func killingTheWorkerMidJobRequeuesTheTaskAndTheServiceGoesOn() async throws {
        try await EndToEnd.withService(["i2v.maxConcurrent": 1, "i2v.maxAttempts": 2]) { client, _, imageBase in
            let victim = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":40"#, frames: 64)
            try await EndToEnd.waitForStep(client, victim, atLeast: 2)
            let ready = try await client.execute(uri: "/ready", method: .get)
            let pid = try #require(try ready.jsonObject()["worker_pid"] as? Int)
            #expect(kill(pid_t(pid), SIGKILL) == 0)
            // The API stays up while the worker is down and comes back.
            #expect(try await client.execute(uri: "/health", method: .get).status == .ok)
            // Re-queued once (a second attempt) on the restarted worker, and it then succeeds.
            let after = try await client.waitFor(victim, status: "Succeed", timeout: .seconds(180))
            #expect(after["status"] as? String == "Succeed", "\(after)")
            let again = try await client.execute(uri: "/ready", method: .get)
            #expect(again.status == .ok)
            #expect(try again.jsonObject()["worker_pid"] as? Int != pid)
            let next = try await client.submit(imageURL: "\(imageBase)/image.png")
            #expect(try await client.waitFor(next, status: "Succeed", timeout: .seconds(120))["status"] as? String == "Succeed")
        }
    }

    @Test func twoCPUWorkersRunAJobEachAndKillingOneRequeuesOnlyItsJob() async throws {
        try await EndToEnd.withService(["i2v.devices": "cpu,cpu", "i2v.maxConcurrent": 2, "i2v.maxAttempts": 2]) { client, dataDir, imageBase in
            var pids: [Int] = []
            try #require(
                await eventually("both workers ready") {
                    let workers = try await client.execute(uri: "/ready", method: .get).jsonObject()["workers"] as? [[String: Any]] ?? []
                    pids = workers.compactMap { $0["pid"] as? Int }
                    return workers.count == 2 && workers.allSatisfy { $0["state"] as? String == "ready" }
                })
            #expect(Set(pids).count == 2, "each worker is its own process: \(pids)")
            // The first goes to worker 0; the second to worker 1, the one without a job.
            let first = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":40"#, frames: 64)
            let second = try await client.submit(imageURL: "\(imageBase)/image.png", extra: #","infer_steps":40"#, frames: 64)
            try #require(
                await eventually("both jobs in progress at once") {
                    let a = try await client.status(first), b = try await client.status(second)
                    return EndToEnd.step(a) >= 1 && EndToEnd.step(b) >= 2
                })
            let busy = try await client.execute(uri: "/ready", method: .get).jsonObject()["workers"] as? [[String: Any]]
            #expect(busy?.map { $0["running"] as? Int } == [1, 1])

            #expect(kill(pid_t(pids[1]), SIGKILL) == 0)
            let kept = try await client.waitFor(first, status: "Succeed", timeout: .seconds(180))
            #expect(kept["status"] as? String == "Succeed", "\(kept)")
            let requeued = try await client.waitFor(second, status: "Succeed", timeout: .seconds(180))
            #expect(requeued["status"] as? String == "Succeed", "\(requeued)")
            let store = try SQLiteTaskStore(path: dataDir.appending(path: "tasks.sqlite").path)
            #expect(try await store.task(id: first)?.attempts == 1, "the other worker's job ran once")
            #expect(try await store.task(id: second)?.attempts == 2, "the killed worker's job ran again")

            try #require(
                await eventually("the killed worker back") {
                    let workers = try await client.execute(uri: "/ready", method: .get).jsonObject()["workers"] as? [[String: Any]] ?? []
                    return workers.count == 2 && workers[1]["state"] as? String == "ready"
                })
            let after = try #require(try await client.execute(uri: "/ready", method: .get).jsonObject()["workers"] as? [[String: Any]])
            #expect(after[0]["pid"] as? Int == pids[0] && after[0]["restarts"] as? Int == 0)
            #expect(after[1]["pid"] as? Int != pids[1] && after[1]["restarts"] as? Int == 1)
        }
    }
}

enum EndToEnd {
    /// The worker's interpreter: `I2V_TEST_PYTHON` (set by `make test`) or the repo's `.venv`.
    static let python: String? = {
        let candidates: [String] = [ProcessInfo.processInfo.environment["I2V_TEST_PYTHON"], repositoryRoot.appending(path: ".venv/bin/python").path].compactMap
        { $0 }
        let ffprobe = ["/usr/bin/ffprobe", "/usr/local/bin/ffprobe"].contains { FileManager.default.isExecutableFile(atPath: $0) }
        guard ffprobe else { return nil }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// One demo checkpoint for the whole suite, built by the worker's own builder.
    static func checkpoint(python: String) async throws -> String {
        let directory = FileManager.default.temporaryDirectory.appending(path: "i2v-e2e-demo-checkpoint")
        if !FileManager.default.fileExists(atPath: directory.appending(path: "i2v_model.json").path) {
            let (_, status) = try await runTool(
                python,
                ["-m", "i2v_worker.demo", "--output", directory.path],
                environment: ["PYTHONPATH": repositoryRoot.appending(path: "worker").path]
            )
            try #require(status == 0, "building the demo checkpoint exited with \(status)")
        }
        return directory.path
    }

    static func withService(
        _ values: [String: ConfigValue] = [:],
        _ body: @Sendable (_ client: any TestClientProtocol, _ dataDir: URL, _ imageBase: String) async throws -> Void
    ) async throws {
        let python = try #require(python, "the worker's Python environment or ffprobe is missing (make python-env)")
        let directory = try TemporaryDirectory()
        var settings: [String: ConfigValue] = [
            "i2v.python": .init(stringLiteral: python),
            "i2v.modelPath": .init(stringLiteral: try await checkpoint(python: python)),
            "i2v.device": "cpu",
            "i2v.logLevel": "info",
        ]
        for (key, value) in values { settings[key] = value }
        let app = try await buildApplication(configuration: testConfiguration(dataDir: directory.url, settings))
        let dataDir = directory.url
        try await withImageServer { base in
            try await app.test(.live) { client in
                try await waitUntilReady(client)
                try await body(client, dataDir, base)
            }
        }
    }

    static func waitUntilReady(_ client: some TestClientProtocol) async throws {
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline {
            if try await client.execute(uri: "/ready", method: .get).status == .ok { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("the worker did not become ready within 120 s")
    }

    static func step(_ status: [String: Any]) -> Int {
        (status["progress"] as? [String: Any])?["step"] as? Int ?? 0
    }

    static func waitForStep(_ client: some TestClientProtocol, _ id: String, atLeast step: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline {
            let status = try await client.status(id)
            if ((status["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= step { return }
            if ["Succeed", "Failed", "Cancelled"].contains(status["status"] as? String ?? "") {
                Issue.record("task ended before step \(step): \(status)")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("task never reached step \(step)")
    }

    struct Probe {
        var width: Int?
        var height: Int?
        var frames: Int?
        var fps: String?
        var codec: String?
        var pixelFormat: String?
    }

    static func ffprobe(_ file: URL) async throws -> Probe {
        let (data, _) = try await runTool(
            "/usr/bin/ffprobe",
            [
                "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                "stream=width,height,nb_read_frames,r_frame_rate,codec_name,pix_fmt", "-of", "json", file.path,
            ])
        let stream = ((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["streams"] as? [[String: Any]])?.first ?? [:]
        return Probe(
            width: stream["width"] as? Int,
            height: stream["height"] as? Int,
            frames: (stream["nb_read_frames"] as? String).flatMap(Int.init),
            fps: stream["r_frame_rate"] as? String,
            codec: stream["codec_name"] as? String,
            pixelFormat: stream["pix_fmt"] as? String
        )
    }
}
