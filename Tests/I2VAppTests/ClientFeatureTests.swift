import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// Idempotent submits, the live status stream and the ETA, through the HTTP API.
@Suite struct ClientFeatureTests {
    actor Counter {
        private(set) var value = 0
        func increment() { value += 1 }
    }

    static func headers(key: String = TestKeys.alice, idempotencyKey: String? = nil) -> HTTPFields {
        var headers: HTTPFields = [.authorization: "Bearer \(key)", .contentType: "application/json"]
        if let idempotencyKey { headers[.idempotencyKey] = idempotencyKey }
        return headers
    }

    static func submitBody(_ imageURL: String, steps: Int = 20, prompt: String = "A dancing cat in the style of Van Gogh") -> String {
        #"{"image_url":"\#(imageURL)","prompt":"\#(prompt)","infer_steps":\#(steps),"num_frames":24}"#
    }

    /// Ten clients retry one submit at once while its image is still downloading: one task, one download,
    /// one id for all of them; the key with another request is 409, and another key's owner is apart.
    @Test func concurrentSubmitsWithOneIdempotencyKeyMakeOneTask() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker()
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.submitsPerMinute": 0])
        let downloads = Counter()
        try await withImageServer({ router in
            router.get("slow.png") { _, _ in
                await downloads.increment()
                // Long enough that every retry arrives while the first submit is still downloading.
                try await Task.sleep(for: .seconds(1))
                return Response(status: .ok, headers: [.contentType: "image/png"], body: .init(byteBuffer: ByteBuffer(bytes: fixtureImage)))
            }
        }) { base in
            try await app.test(.router) { client in
                let body = Self.submitBody("\(base)/slow.png")
                let answers = try await withThrowingTaskGroup(of: (HTTPResponse.Status, String?, Bool).self) { group in
                    for _ in 0..<10 {
                        group.addTask {
                            let response = try await client.execute(
                                uri: "/video/submit", method: .post, headers: Self.headers(idempotencyKey: "order-42"),
                                body: ByteBuffer(string: body)
                            )
                            let id = try? response.jsonObject()["requestId"] as? String
                            return (response.status, id, response.headers[.idempotentReplayed] == "true")
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(answers.allSatisfy { $0.0 == .accepted }, "\(answers)")
                let ids = Set(answers.compactMap(\.1))
                #expect(ids.count == 1, "\(answers)")
                #expect(answers.filter(\.2).count == 9, "all but the first are replays: \(answers)")
                #expect(await downloads.value == 1)
                let listed = try await client.execute(uri: "/v1/videos?limit=50", method: .get, headers: Self.headers())
                #expect((try listed.jsonObject()["data"] as? [Any])?.count == 1)

                // The same key through the other API names the same task when the request is the same one.
                let id = try #require(ids.first)
                let again = try await client.execute(
                    uri: "/video/submit", method: .post, headers: Self.headers(idempotencyKey: "order-42"), body: ByteBuffer(string: body)
                )
                #expect(again.status == .accepted)
                #expect(try again.jsonObject()["requestId"] as? String == id)

                // The key with another request.
                let other = try await client.execute(
                    uri: "/video/submit", method: .post, headers: Self.headers(idempotencyKey: "order-42"),
                    body: ByteBuffer(string: Self.submitBody("\(base)/slow.png", prompt: "A sleeping cat in the style of Monet"))
                )
                #expect(other.status == .conflict)
                #expect(other.reason().contains("Idempotency-Key"), "\(other.reason())")
                let openAI = try await client.execute(
                    uri: "/v1/videos", method: .post, headers: Self.headers(idempotencyKey: "order-42"),
                    body: ByteBuffer(string: #"{"prompt":"A sleeping cat in the style of Monet","input_reference":{"image_url":"\#(base)/image.png"}}"#)
                )
                #expect(openAI.status == .conflict)
                #expect((try openAI.jsonObject()["error"] as? [String: Any])?["code"] as? String == "idempotency_key_reused")

                // Bob's key of the same name is his own.
                let bobs = try await client.execute(
                    uri: "/video/submit", method: .post, headers: Self.headers(key: TestKeys.bob, idempotencyKey: "order-42"),
                    body: ByteBuffer(string: body)
                )
                #expect(bobs.status == .accepted)
                #expect(try bobs.jsonObject()["requestId"] as? String != id)

                let bad = try await client.execute(
                    uri: "/video/submit", method: .post, headers: Self.headers(idempotencyKey: String(repeating: "k", count: 256)),
                    body: ByteBuffer(string: body)
                )
                #expect(bad.status == .badRequest)
            }
        }
    }

    /// A submit that failed gives its key back: the retry runs again rather than repeating the failure or
    /// being refused.
    @Test func aFailedSubmitFreesItsIdempotencyKey() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.submitsPerMinute": 0])
        let downloads = Counter()
        try await withImageServer({ router in
            router.get("missing.png") { _, _ in
                await downloads.increment()
                return Response(status: .notFound)
            }
        }) { base in
            try await app.test(.router) { client in
                for _ in 0..<2 {
                    let response = try await client.execute(
                        uri: "/video/submit", method: .post, headers: Self.headers(idempotencyKey: "retry-me"),
                        body: ByteBuffer(string: Self.submitBody("\(base)/missing.png"))
                    )
                    #expect(response.status == .badRequest)
                }
                #expect(await downloads.value == 2)
            }
        }
    }

    struct StreamEvent {
        var id: Int
        var body: [String: Any]
    }

    static func events(_ text: String) throws -> (events: [StreamEvent], comments: [String]) {
        var events: [StreamEvent] = []
        var comments: [String] = []
        for block in text.components(separatedBy: "\n\n") where !block.isEmpty {
            var id: Int?
            var data: String?
            for line in block.split(separator: "\n") {
                if line.hasPrefix(":") { comments.append(String(line)) }
                if line.hasPrefix("id: ") { id = Int(line.dropFirst(4)) }
                if line.hasPrefix("data: ") { data = String(line.dropFirst(6)) }
            }
            if let id, let data {
                let body = try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any] ?? [:]
                events.append(StreamEvent(id: id, body: body))
            }
        }
        return (events, comments)
    }

    @Test func aStreamCarriesEveryEventOfAJobInOrderAndResumesWithoutLoss() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(20))
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.submitsPerMinute": 0])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let response = try await client.execute(
                    uri: "/video/submit", method: .post, headers: Self.headers(), body: ByteBuffer(string: Self.submitBody("\(base)/image.png"))
                )
                let id = try #require(try response.jsonObject()["requestId"] as? String)
                let stream = try await client.execute(uri: "/video/stream/\(id)", method: .get, headers: Self.headers())
                #expect(stream.status == .ok)
                #expect(stream.headers[.contentType] == "text/event-stream")
                let (events, _) = try Self.events(String(buffer: stream.body))
                #expect(events.map(\.id) == events.map(\.id).sorted() && Set(events.map(\.id)).count == events.count, "ids rise")
                #expect(events.allSatisfy { $0.body["requestId"] as? String == id })
                let steps = events.filter { $0.body["status"] as? String == "InProgress" }
                    .compactMap { ($0.body["progress"] as? [String: Any])?["step"] as? Int }
                #expect(steps == Array(0...20), "one event per step, none missed: \(steps)")
                let last = try #require(events.last)
                #expect(last.body["status"] as? String == "Succeed")
                #expect(((last.body["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.count == 1)
                #expect(events.dropLast().allSatisfy { !["Succeed", "Failed", "Cancelled"].contains($0.body["status"] as? String ?? "") })

                // A client that saw up to step 3 gets the rest, the same events with the same ids.
                let stepThree = try #require(events.first { ($0.body["progress"] as? [String: Any])?["step"] as? Int == 3 })
                var resumeHeaders = Self.headers()
                resumeHeaders[.lastEventID] = String(stepThree.id)
                let resumed = try await client.execute(uri: "/video/stream/\(id)", method: .get, headers: resumeHeaders)
                let rest = try Self.events(String(buffer: resumed.body)).events
                #expect(rest.map(\.id) == events.filter { $0.id > stepThree.id }.map(\.id))
                // After the terminal event there is nothing more.
                resumeHeaders[.lastEventID] = String(last.id)
                let done = try await client.execute(uri: "/video/stream/\(id)", method: .get, headers: resumeHeaders)
                #expect(try Self.events(String(buffer: done.body)).events.isEmpty)

                #expect(try await client.execute(uri: "/video/stream/\(id)", method: .get, headers: Self.headers(key: TestKeys.bob)).status == .notFound)
                #expect(
                    try await client.execute(uri: "/video/stream/\(String(repeating: "0", count: 32))", method: .get, headers: Self.headers()).status
                        == .notFound)
                #expect(try await client.execute(uri: "/video/stream/\(id)", method: .get).status == .unauthorized)
            }
        }
    }

    @Test func aQuietStreamSendsKeepAlives() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker()
        await worker.setHoldsAfterLastStep(true)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker, ["i2v.submitsPerMinute": 0, "i2v.streamKeepaliveSeconds": 0.2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let parked = await eventually("the job reaching its last step") { await worker.heldAfterLastStep.contains(id) }
                try #require(parked)
                async let streamed = client.execute(uri: "/video/stream/\(id)", method: .get, headers: Self.headers())
                // Nothing changes while the job is held: only keep-alives go out.
                try await Task.sleep(for: .seconds(1))
                await worker.releaseHeldJobs()
                let (events, comments) = try Self.events(String(buffer: try await streamed.body))
                #expect(comments.contains(": keep-alive"), "\(comments)")
                #expect(events.last?.body["status"] as? String == "Succeed")
            }
        }
    }

    /// The ETA comes from what finished jobs of the same size took per step and to encode, and the work
    /// ahead spread over the live nodes' slots; without a finished job there is none.
    @Test func theETAFollowsMeasuredStepTimesAndTheWorkAhead() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "eta.sqlite").path)
        // Two finished jobs: 30 steps in 30 s and in 60 s (1.5 s a step), 2 s to encode.
        for index in 0..<2 {
            try await store.enqueue(TaskStoreTests.record("done\(index)"), maxQueued: 10)
            _ = try await store.claimNext(node: "n", lease: .seconds(30))
            var result = TaskStoreTests.result
            (result.width, result.height, result.numFrames, result.inferSteps) = (160, 96, 81, 30)
            (result.inferenceSeconds, result.encodeSeconds) = (index == 0 ? 30 : 60, 2)
            try await store.finish(id: "done\(index)", node: "n", outcome: .succeeded(result))
        }
        try await store.enqueue(TaskStoreTests.record("running"), maxQueued: 10)
        _ = try await store.claimNext(node: "n", lease: .seconds(30))
        try await store.recordProgress(id: "running", node: "n", step: 10, total: 30)
        try await store.enqueue(TaskStoreTests.record("waiting-1"), maxQueued: 10)
        try await store.enqueue(TaskStoreTests.record("waiting-2"), maxQueued: 10)
        var portrait = TaskStoreTests.record("portrait")
        (portrait.parameters.width, portrait.parameters.height) = (96, 160)
        try await store.enqueue(portrait, maxQueued: 10)
        try await store.recordHeartbeat(WorkerNode(id: "n", models: [], slots: 2, running: 1, startedAt: Date(), heartbeatAt: Date()))
        let view = ReadTask(store: store, estimate: EstimateETA(statistics: store, nodes: LiveNodes(registry: store, lease: .seconds(30))))
        #expect(try await view(id: "portrait", owner: "owner")?.etaSeconds == nil, "no job of that size has finished")
        let running = try #require(try await view(id: "running", owner: "owner"))
        #expect(running.etaSeconds.map { abs($0 - (20 * 1.5 + 2)) < 1e-6 } == true, "\(String(describing: running.etaSeconds))")
        let second = try #require(try await view(id: "waiting-2", owner: "owner"))
        let job = 30 * 1.5 + 2.0
        let expected = (Double((second.queuePosition ?? 0) - 1) * job + 20 * 1.5) / 2 + job
        #expect(second.etaSeconds.map { abs($0 - expected) < 1e-6 } == true, "\(String(describing: second.etaSeconds)) vs \(expected)")
    }
}
