import Configuration
import Foundation
import HTTPTypes
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

/// Task lifecycle with a test double for the worker: queue positions, the concurrency cap, cancel,
/// results, downloads and expiry.
@Suite struct LifecycleTests {
    @Test func submitRunsToSucceedAndTheVideoDownloadsWithRanges() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":1234"#, frames: 50)
                let done = try await client.waitFor(id, status: "Succeed")
                #expect(done["status"] as? String == "Succeed")
                #expect(done["reason"] == nil && done["queue_position"] == nil && done["progress"] == nil)
                let results = try #require(done["results"] as? [String: Any])
                #expect(results["seed"] as? Int == 1234)
                #expect(results["num_frames"] as? Int == 49)
                #expect(results["fps"] as? Int == 16)
                // 320×180 on a 15360-pixel model: h = floor(round(sqrt(15360*180/320))/16)*16 = 80, w = 160.
                #expect(results["width"] as? Int == 160 && results["height"] as? Int == 80)
                #expect((results["timings"] as? [String: Any])?["inference"] is Double)
                let url = try #require(((results["videos"] as? [[String: Any]])?.first?["url"]) as? String)
                #expect(url.hasPrefix("http://localhost:8088/videos/") && url.hasSuffix(".mp4"))
                let path = String(url.dropFirst("http://localhost:8088".count))

                let whole = try await client.execute(uri: path, method: .get)
                #expect(whole.status == .ok)
                #expect(whole.headers[.contentType] == "video/mp4")
                let content = String(buffer: whole.body)
                #expect(content == "fake mp4 for \(id)")
                #expect(whole.headers[.contentLength] == String(content.utf8.count))

                let part = try await client.execute(uri: path, method: .get, headers: [.range: "bytes=5-7"])
                #expect(part.status == .partialContent)
                #expect(String(buffer: part.body) == "mp4")
                #expect(part.headers[.contentRange] == "bytes 5-7/\(content.utf8.count)")

                let head = try await client.execute(uri: path, method: .head)
                #expect(head.status == .ok)
                #expect(head.headers[.contentLength] == String(content.utf8.count))
                #expect(head.body.readableBytes == 0)

                // The prepared input is not kept once the task ended.
                #expect(!FileManager.default.fileExists(atPath: directory.url.appending(path: "inputs/\(id).png").path))
            }
        }
    }

    @Test func randomSeedIsReportedNotNull() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let done = try await client.waitFor(id, status: "Succeed")
                let seed = try #require((done["results"] as? [String: Any])?["seed"] as? Int)
                #expect((0...2_147_483_647).contains(seed))
            }
        }
    }

    @Test func videoNamesThatAreNotOursAre404() async throws {
        let directory = try TemporaryDirectory()
        try Data("secret".utf8).write(to: directory.url.appending(path: "tasks.secret"))
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.router) { client in
            for path in [
                "/videos/../tasks.sqlite", "/videos/%2e%2e/tasks.secret", "/videos/\(String(repeating: "a", count: 32)).mp4",
                "/videos/\(String(repeating: "A", count: 32)).mp4", "/videos/x.mp4", "/videos/", "/videos",
                "/videos/\(String(repeating: "a", count: 32)).mp4.tmp",
            ] {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .notFound, "\(path)")
                #expect(!String(buffer: response.body).contains("secret"))
            }
        }
    }

    @Test func twentyConcurrentSubmitsNeverRunMoreThanTheCap() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(4), ready: false)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.maxConcurrent": 2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let ids = try await withThrowingTaskGroup(of: String.self) { group in
                    for _ in 0..<20 { group.addTask { try await client.submit(imageURL: "\(base)/image.png") } }
                    return try await group.reduce(into: [String]()) { $0.append($1) }
                }
                #expect(Set(ids).count == 20)
                // Nothing runs while the worker is not ready: positions are 1...20, each once.
                var positions: [Int] = []
                for id in ids {
                    let status = try await client.status(id)
                    #expect(status["status"] as? String == "InQueue")
                    positions.append(status["queue_position"] as? Int ?? -1)
                }
                #expect(positions.sorted() == Array(1...20))

                await worker.setReady(true)
                var sawProgress = false
                let deadline = ContinuousClock.now + .seconds(120)
                for id in ids {
                    while true {
                        let status = try await client.status(id)
                        if ContinuousClock.now > deadline {
                            Issue.record("task \(id) did not succeed within 120 s; last state: \(status)")
                            return
                        }
                        if let progress = status["progress"] as? [String: Any] {
                            sawProgress = true
                            #expect(progress["total_steps"] as? Int == 20)
                            #expect(status["queue_position"] == nil)
                        }
                        if status["status"] as? String == "Succeed" { break }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                }
                #expect(sawProgress)
                #expect(await worker.maxConcurrent == 2)
                // FIFO: the worker started them in the order the queue gave them.
                let started = await worker.started
                let order = ids.sorted { a, b in positions[ids.firstIndex(of: a)!] < positions[ids.firstIndex(of: b)!] }
                #expect(started == order)
            }
        }
    }

    @Test func cancelQueuedRunningAndFinishedTasks() async throws {
        let directory = try TemporaryDirectory()
        // Slow steps (4 s a task) so the running task cannot finish before the test cancels it, even on a
        // loaded machine.
        let worker = FakeWorker(stepDuration: .milliseconds(200))
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.maxConcurrent": 1])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let running = try await client.submit(imageURL: "\(base)/image.png")
                let queued = try await client.submit(imageURL: "\(base)/image.png")
                _ = try await client.waitFor(running, status: "InProgress")

                let cancelQueued = try await client.post("/video/cancel", json: #"{"requestId":"\#(queued)"}"#)
                #expect(cancelQueued.status == .ok)
                #expect(try cancelQueued.jsonObject()["status"] as? String == "Succeed")
                let queuedStatus = try await client.status(queued)
                #expect(queuedStatus["status"] as? String == "Cancelled")
                #expect((queuedStatus["reason"] as? String)?.contains("cancel") == true)

                let cancelRunning = try await client.post("/video/cancel", json: #"{"requestId":"\#(running)"}"#)
                #expect(cancelRunning.status == .ok)
                let runningStatus = try await client.waitFor(running, status: "Cancelled")
                #expect(runningStatus["status"] as? String == "Cancelled")
                #expect(runningStatus["results"] == nil)
                #expect(await worker.running.isEmpty)

                let again = try await client.post("/video/cancel", json: #"{"requestId":"\#(running)"}"#)
                #expect(again.status == .ok)

                // The freed slot takes the next task, which can succeed; cancelling it then is 400.
                let next = try await client.submit(imageURL: "\(base)/image.png")
                await worker.setStepDuration(.milliseconds(2))
                #expect(try await client.waitFor(next, status: "Succeed")["status"] as? String == "Succeed")
                let late = try await client.post("/video/cancel", json: #"{"requestId":"\#(next)"}"#)
                #expect(late.status == .badRequest)
                #expect(late.failureReason?.contains("succeeded") == true)
            }
        }
    }

    /// The worker reports its last step, then decodes and encodes without looking at cancels. A cancel
    /// that lands then is acknowledged with 200, so the task must end Cancelled and its video go.
    @Test func aCancelAfterTheLastStepIsHonoured() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(2))
        await worker.setHoldsAfterLastStep(true)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker)
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the job reaching its decode") { await worker.heldAfterLastStep.contains(id) })
                let cancel = try await client.post("/video/cancel", json: #"{"requestId":"\#(id)"}"#)
                #expect(cancel.status == .ok)
                await worker.releaseHeldJobs()
                let status = try await client.waitFor(id, status: "Cancelled")
                #expect(status["status"] as? String == "Cancelled", "\(status)")
                #expect(status["reason"] as? String == "cancelled by the client")
                #expect(status["results"] == nil)
                try #require(
                    await eventually("the discarded video being removed") {
                        let videos = (try? FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "videos").path)) ?? []
                        return videos.isEmpty
                    })
                // Once it has ended, a second cancel is still fine; a finished task's cancel is not.
                #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(id)"}"#).status == .ok)
                let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                #expect(metrics.contains(#"i2v_task_outcomes_total{status="Cancelled"} 1"#), "\(metrics)")
                #expect(!metrics.contains(#"i2v_task_outcomes_total{status="Succeed"}"#))
            }
        }
    }

    /// One client's cancel must not cost another client's job its progress: with two jobs on one worker,
    /// a cancelled job stuck in a phase that does not look at cancels is recorded Cancelled when its grace
    /// runs out, and the worker is not restarted; the other job finishes from where it was, once.
    @Test func aCancelThatOutlivesItsGraceNeverRestartsAWorkerRunningAnotherClientsJob() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(2))
        await worker.setHoldsAfterLastStep(true)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.cancelGraceSeconds": 0.5])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let a = try await client.submit(imageURL: "\(base)/image.png")
                let b = try await client.submit(imageURL: "\(base)/image.png", key: TestKeys.bob)
                try #require(await eventually("both jobs in their decode") { await worker.heldAfterLastStep == [a, b] })

                #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(a)"}"#).status == .ok)
                let cancelled = try await client.waitFor(a, status: "Cancelled")
                #expect(cancelled["status"] as? String == "Cancelled", "\(cancelled)")
                #expect(await worker.restarts.isEmpty)
                #expect(try await client.status(b, key: TestKeys.bob)["status"] as? String == "InProgress")

                await worker.releaseHeldJobs()
                let done = try await client.waitFor(b, status: "Succeed", key: TestKeys.bob)
                #expect(done["status"] as? String == "Succeed", "\(done)")
                #expect(await worker.started.filter { $0 == b }.count == 1)
                // The cancelled job's video, made after all, is discarded; its task stays Cancelled.
                try #require(
                    await eventually("the cancelled job's video removed") {
                        let videos = (try? FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "videos").path)) ?? []
                        return videos.count == 1
                    })
                #expect(try await client.status(a)["status"] as? String == "Cancelled")
            }
        }
    }

    @Test func aWorkerThatIgnoresCancelIsRestartedWithinTheGrace() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(100))
        await worker.setIgnoresCancel(true)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.cancelGraceSeconds": 0.3])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                _ = try await client.waitFor(id, status: "InProgress")
                #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(id)"}"#).status == .ok)
                let status = try await client.waitFor(id, status: "Cancelled")
                #expect(status["status"] as? String == "Cancelled")
                #expect(await worker.restarts.count == 1)
            }
        }
    }

    @Test func aCrashedWorkersTaskIsRequeuedOnceThenFailed() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(200))
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.maxAttempts": 2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                _ = try await client.waitFor(id, status: "InProgress")
                try #require(await eventually("the first attempt starting") { await worker.running.contains(id) })
                await worker.crash()
                // Requeued and claimed again: a second attempt is running on the worker.
                try #require(
                    await eventually("a second attempt starting") {
                        let attempts = await worker.started.count
                        let running = await worker.running.contains(id)
                        return attempts == 2 && running
                    })
                await worker.crash()
                let failed = try await client.waitFor(id, status: "Failed")
                #expect(failed["status"] as? String == "Failed")
                let reason = try #require(failed["reason"] as? String)
                #expect(reason.contains("exited") && reason.contains("2 attempts"))
            }
        }
    }

    @Test func fullQueueIs429WithRetryAfterAndLosesNothing() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.maxQueued": 2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let first = try await client.submit(imageURL: "\(base)/image.png")
                let second = try await client.submit(imageURL: "\(base)/image.png")
                let refused = try await client.post("/video/submit", json: SubmitValidationTests.body([:], imageURL: "\(base)/image.png"))
                #expect(refused.status == .tooManyRequests)
                #expect(Int(refused.headers[.retryAfter] ?? "") ?? 0 > 0)
                #expect(refused.failureReason?.contains("queue is full") == true)
                #expect(try await client.status(first)["queue_position"] as? Int == 1)
                #expect(try await client.status(second)["queue_position"] as? Int == 2)
                let inputs = try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "inputs").path)
                #expect(inputs.count == 2)
            }
        }
    }

    @Test func perKeyRateLimitIs429() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.submitsPerMinute": 2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                _ = try await client.submit(imageURL: "\(base)/image.png")
                _ = try await client.submit(imageURL: "\(base)/image.png")
                let limited = try await client.post("/video/submit", json: SubmitValidationTests.body([:], imageURL: "\(base)/image.png"))
                #expect(limited.status == .tooManyRequests)
                #expect(Int(limited.headers[.retryAfter] ?? "") ?? 0 > 0)
                // Another key has its own budget.
                _ = try await client.submit(imageURL: "\(base)/image.png", key: TestKeys.bob)
            }
        }
    }

    @Test func badImagesAre400WithTheirReason() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer({ router in
            router.get("missing.png") { _, _ in Response(status: .notFound) }
            router.get("page.html") { _, _ in
                Response(status: .ok, headers: [.contentType: "text/html"], body: .init(byteBuffer: ByteBuffer(string: "<html>hello</html>")))
            }
        }) { base in
            try await app.test(.router) { client in
                for (path, words) in [("/missing.png", "404"), ("/page.html", "not a decodable image")] {
                    let response = try await client.post("/video/submit", json: SubmitValidationTests.body([:], imageURL: "\(base)\(path)"))
                    #expect(response.status == .badRequest, "\(path)")
                    #expect(response.failureReason?.contains(words) == true, "\(path): \(response.failureReason ?? "")")
                    #expect((try response.jsonObject()["detail"] as? [String: Any])?["status"] as? String == "Failed")
                }
                let metrics = try await client.execute(uri: "/metrics", method: .get)
                #expect(String(buffer: metrics.body).contains("i2v_image_failures_total"))
            }
        }
    }

    @Test func privateImageHostsAreRefusedByDefault() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.allowPrivateImageHosts": false])
        try await withImageServer { base in
            try await app.test(.router) { client in
                for url in [
                    "\(base)/image.png", "http://localhost/image.png", "http://169.254.169.254/latest/meta-data", "http://2130706433/", "http://[::1]/x.png",
                ] {
                    let response = try await client.post("/video/submit", json: SubmitValidationTests.body([:], imageURL: url))
                    #expect(response.status == .badRequest, "\(url)")
                    #expect(response.failureReason?.contains("blocked") == true, "\(url): \(response.failureReason ?? "")")
                }
            }
        }
    }

    @Test func expiredVideosAreDeletedAndReportedAsExpired() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(
            dataDir: directory.url,
            worker: FakeWorker(),
            ["i2v.videoTtlSeconds": 3, "i2v.sweepIntervalSeconds": 0.2]
        )
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let done = try await client.waitFor(id, status: "Succeed")
                let url = try #require((((done["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"]) as? String)
                let path = String(url.dropFirst("http://localhost:8088".count))
                #expect(try await client.execute(uri: path, method: .get).status == .ok)
                let deadline = ContinuousClock.now + .seconds(60)
                var status: [String: Any] = [:]
                repeat {
                    try await Task.sleep(for: .milliseconds(200))
                    status = try await client.status(id)
                } while status["reason"] == nil && ContinuousClock.now < deadline
                #expect(status["status"] as? String == "Succeed")
                #expect(status["reason"] as? String == "video expired")
                #expect(((status["results"] as? [String: Any])?["videos"] as? [Any])?.isEmpty == true)
                #expect(try await client.execute(uri: path, method: .get).status == .notFound)
                let videos = try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "videos").path)
                #expect(videos.isEmpty)
            }
        }
    }
}
