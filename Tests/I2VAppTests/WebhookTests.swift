import Configuration
import Crypto
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

/// A loopback receiver: records every delivery and answers each message (by webhook-id) with the statuses it
/// is given, in turn (the last one repeats). A stalled receiver holds each request until it is released.
actor WebhookReceiver {
    struct Delivery: Sendable {
        var headers: [String: String]
        var body: String
        var answered: Int
    }

    private(set) var deliveries: [Delivery] = []
    private var answers: [Int]
    private var stalled: [CheckedContinuation<Void, Never>] = []
    private var stalling: Bool

    init(answers: [Int] = [200], stalling: Bool = false) {
        self.answers = answers
        self.stalling = stalling
    }

    func setAnswers(_ answers: [Int]) { self.answers = answers }

    func receive(headers: [String: String], body: String) async -> Int {
        if stalling {
            deliveries.append(Delivery(headers: headers, body: body, answered: 0))
            await withCheckedContinuation { stalled.append($0) }
            return 200
        }
        let earlier = deliveries.filter { $0.headers["webhook-id"] == headers["webhook-id"] }.count
        let status = answers.isEmpty ? 200 : answers[min(earlier, answers.count - 1)]
        deliveries.append(Delivery(headers: headers, body: body, answered: status))
        return status
    }

    func release() {
        stalling = false
        for waiter in stalled { waiter.resume() }
        stalled = []
    }
}

/// The image server of the other tests with a `/hook` route that hands every request to `receiver`.
func withWebhookReceiver<T: Sendable>(
    _ receiver: WebhookReceiver,
    _ body: @Sendable (_ imageURL: String, _ hookURL: String) async throws -> T
) async throws -> T {
    try await withImageServer({ router in
        router.post("hook") { request, _ -> Response in
            let bytes = try await request.body.collect(upTo: 1 << 20)
            var headers: [String: String] = [:]
            for field in request.headers { headers[field.name.canonicalName] = field.value }
            let status = await receiver.receive(headers: headers, body: String(buffer: bytes))
            return Response(status: .init(code: status))
        }
    }) { base in
        try await body("\(base)/image.png", "\(base)/hook")
    }
}

@Suite struct WebhookTests {
    /// Standard Webhooks' published example (the reference libraries' test vector; the `standardwebhooks`
    /// 1.1.0 Python package's `Webhook.sign` gives the same value for it).
    static let referenceSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    @Test func signatureMatchesTheStandardWebhooksReference() throws {
        let signer = try WebhookSigner(secret: Self.referenceSecret)
        #expect(
            signer.signature(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330, body: #"{"test": 2432232314}"#)
                == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        )
        // The bare base64 form is the same key.
        let bare = try WebhookSigner(secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        #expect(bare.signature(id: "msg_1", timestamp: 1, body: "{}") == signer.signature(id: "msg_1", timestamp: 1, body: "{}"))
        #expect(signer.signature(id: "msg_1", timestamp: 2, body: "{}") != signer.signature(id: "msg_1", timestamp: 1, body: "{}"))
    }

    @Test func unusableSecretsAreRefusedWithTheReason() {
        for secret in ["whsec_not base64!", "whsec_", "whsec_" + Data(repeating: 7, count: 8).base64EncodedString()] {
            #expect(throws: WebhookSecretProblem.self, "\(secret)") { try WebhookSigner(secret: secret) }
        }
    }

    /// Unset, the secret is generated once, kept in the data dir (owner-only), and read back on the next start.
    @Test func aGeneratedSecretIsKeptAcrossStarts() throws {
        let directory = try TemporaryDirectory()
        let logger = Logger(label: "test")
        let first = try WebhookSecret.load(configured: nil, dataDirectory: directory.url, logger: logger)
        let file = directory.url.appending(path: WebhookSecret.fileName)
        let stored = try String(contentsOf: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(stored.hasPrefix("whsec_"))
        let permissions = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(permissions == 0o600)
        let second = try WebhookSecret.load(configured: nil, dataDirectory: directory.url, logger: logger)
        let fromFile = try WebhookSigner(secret: stored)
        let sample = (id: "msg_x", timestamp: 42, body: #"{"a":1}"#)
        #expect(
            first.signature(id: sample.id, timestamp: sample.timestamp, body: sample.body)
                == second.signature(id: sample.id, timestamp: sample.timestamp, body: sample.body))
        #expect(
            first.signature(id: sample.id, timestamp: sample.timestamp, body: sample.body)
                == fromFile.signature(id: sample.id, timestamp: sample.timestamp, body: sample.body))
        // A configured secret wins over the file.
        let configured = try WebhookSecret.load(configured: Self.referenceSecret, dataDirectory: directory.url, logger: logger)
        #expect(
            configured.signature(id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330, body: #"{"test": 2432232314}"#)
                == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        #expect(throws: ConfigurationProblem.self) { try WebhookSecret.load(configured: "whsec_??", dataDirectory: directory.url, logger: logger) }
    }

    @Test func theRetryScheduleAndItsWindow() {
        let policy = WebhookSettings().retry
        let created = Date(timeIntervalSince1970: 1_000_000)
        var now = created
        var delays: [Double] = []
        var attempts = 1
        while let next = policy.nextAttempt(afterAttempts: attempts, createdAt: created, now: now) {
            delays.append(next.timeIntervalSince(now))
            now = next
            attempts += 1
        }
        #expect(Array(delays.prefix(9)) == [5, 10, 30, 120, 300, 1800, 7200, 18000, 36000])
        // The last attempt falls on the window's end (24 h after the event), and a failure there gives up.
        #expect(now == created.addingTimeInterval(86_400))
        #expect(attempts == 11)
    }

    // MARK: Submit

    @Test func eventsAreValidatedOnBothAPIs() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.router) { client in
            let base = #""image_url":"http://127.0.0.1:9/image.png","prompt":"A dancing cat in the style of Van Gogh""#
            for (extra, message) in [
                (#","webhook_url":"https://example.com/h","webhook_events":["completed","finished"]"#, "not 'finished'"),
                (#","webhook_url":"https://example.com/h","webhook_events":"sometimes""#, "not 'sometimes'"),
                (#","webhook_url":"https://example.com/h","webhook_events":[]"#, "at least one event"),
                (#","webhook_url":"https://example.com/h","webhook_events":[1]"#, "should be a string"),
                (#","webhook_events":["completed"]"#, "needs a webhook_url"),
            ] {
                let response = try await client.post("/video/submit", json: "{\(base)\(extra)}")
                #expect(response.status == .unprocessableContent, "\(extra): \(String(buffer: response.body))")
                let issue = response.validationIssues.first
                let field = (issue?["loc"] as? [Any])?.last as? String
                #expect(field == "webhook_events" || field == "webhook_url", "\(extra)")
                #expect((issue?["msg"] as? String)?.contains(message) == true, "\(extra): \(issue ?? [:])")
            }
            let ftp = try await client.post("/video/submit", json: #"{\#(base),"webhook_url":"ftp://example.com/h"}"#)
            #expect(ftp.status == .unprocessableContent)
            #expect(((ftp.validationIssues.first?["loc"] as? [Any])?.last as? String) == "webhook_url")

            let openAI = try await client.post(
                "/v1/videos",
                json:
                    #"{"prompt":"A dancing cat in the style of Van Gogh","input_reference":{"image_url":"http://127.0.0.1:9/i.png"},"webhook_url":"https://example.com/h","webhook_events":["done"]}"#
            )
            #expect(openAI.status == .badRequest)
            let error = try openAI.jsonObject()["error"] as? [String: Any]
            #expect(error?["param"] as? String == "webhook_events", "\(error ?? [:])")
            #expect((error?["message"] as? String)?.contains("webhook_events") == true)
        }
    }

    /// A URL holding CR, LF or another control character is malformed, not something to percent-encode at
    /// delivery: 422 on the native API, and the same issue as a 400 naming webhook_url on /v1/videos.
    @Test func controlCharactersInTheURLAreRefusedOnBothAPIs() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.live) { client in
            for hook in [
                #"https://example.com/h\r\nX-Injected: 1"#, #"https://example.com/h\n"#, #"https://example.com/\th"#, #"https://example.com/h\u0000"#,
                #"https://example.com/h\u007f"#, #"https://example.com/h\u0085"#,
            ] {
                let native = try await client.post(
                    "/video/submit",
                    json: #"{"image_url":"http://127.0.0.1:9/image.png","prompt":"A dancing cat in the style of Van Gogh","webhook_url":"\#(hook)"}"#
                )
                #expect(native.status == .unprocessableContent, "\(hook): \(String(buffer: native.body))")
                let issue = native.validationIssues.first
                #expect((issue?["loc"] as? [Any])?.last as? String == "webhook_url", "\(hook): \(issue ?? [:])")
                #expect((issue?["msg"] as? String)?.contains("control character") == true, "\(hook): \(issue ?? [:])")

                let openAI = try await client.post(
                    "/v1/videos",
                    json:
                        #"{"prompt":"A dancing cat in the style of Van Gogh","input_reference":{"image_url":"http://127.0.0.1:9/i.png"},"webhook_url":"\#(hook)"}"#
                )
                #expect(openAI.status == .badRequest, "\(hook): \(String(buffer: openAI.body))")
                let error = try openAI.jsonObject()["error"] as? [String: Any]
                #expect(error?["param"] as? String == "webhook_url" && error?["code"] as? String == "url_parsing", "\(hook): \(error ?? [:])")
            }
        }
    }

    /// Refused at submit with 400 and a reason naming webhook_url: a private address while private hosts are
    /// not allowed, and the link-local (cloud metadata) range even when they are.
    @Test func blockedWebhookAddressesAreRefusedAtSubmit() async throws {
        let directory = try TemporaryDirectory()
        let strict = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.allowPrivateImageHosts": false])
        try await strict.test(.router) { client in
            for hook in ["http://10.1.2.3/hook", "http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/hook"] {
                let response = try await client.post(
                    "/video/submit",
                    json: #"{"image_url":"https://example.com/i.png","prompt":"A dancing cat in the style of Van Gogh","webhook_url":"\#(hook)"}"#
                )
                #expect(response.status == .badRequest, "\(hook): \(String(buffer: response.body))")
                #expect(response.failureReason?.hasPrefix("webhook_url") == true, "\(hook): \(response.failureReason ?? "")")
            }
        }
        let lenient = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: lenient.url, worker: FakeWorker())
        try await withImageServer { base in
            try await app.test(.router) { client in
                let native = try await client.post(
                    "/video/submit",
                    json: #"{"image_url":"\#(base)/image.png","prompt":"A dancing cat in the style of Van Gogh","webhook_url":"http://169.254.169.254/latest"}"#
                )
                #expect(native.status == .badRequest)
                #expect(native.failureReason == "webhook_url resolves to a blocked address (169.254.169.254, link-local)")
                let openAI = try await client.post(
                    "/v1/videos",
                    json:
                        #"{"prompt":"A dancing cat in the style of Van Gogh","input_reference":{"image_url":"\#(base)/image.png"},"webhook_url":"http://169.254.169.254/"}"#
                )
                #expect(openAI.status == .badRequest)
                let error = try openAI.jsonObject()["error"] as? [String: Any]
                #expect(error?["param"] as? String == "webhook_url" && error?["code"] as? String == "invalid_webhook_url", "\(error ?? [:])")
            }
        }
    }

    /// A host whose DNS now answers with a blocked address is refused at delivery, before any connection.
    @Test func theAddressIsCheckedAgainAtDelivery() async throws {
        let answers = AddressSequence([.v4(0x5db8_d822), .v4(0x0a00_0001)])  // 93.184.216.34, then 10.0.0.1
        let urlGuard = OutboundGuard(allowPrivateHosts: false, subject: "webhook_url") { _ in await answers.next() }
        #expect(try await urlGuard.check("https://hooks.example/receive").addresses == [.v4(0x5db8_d822)])
        let sender = WebhookSender(urlGuard: urlGuard, signer: WebhookSigner(keyBytes: Array(repeating: 1, count: 32)), timeout: .seconds(30))
        let message = WebhookMessage(
            id: "msg_1", taskID: "t", event: .completed, url: "https://hooks.example/receive", body: "{}", state: .pending,
            attempts: 1, createdAt: Date(), nextAttemptAt: Date(), lastError: nil, lastStatus: nil, finishedAt: nil
        )
        let result = await sender.send(message, logger: Logger(label: "test"))
        #expect(result == .refused(reason: "webhook_url resolves to a blocked address (10.0.0.1, private)"))
    }

    // MARK: Delivery

    static func webhookApp(dataDir: URL, worker: FakeWorker, _ values: [String: ConfigValue] = [:]) async throws -> some ApplicationProtocol {
        var all: [String: ConfigValue] = [
            "i2v.webhookSecret": .init(stringLiteral: referenceSecret),
            "i2v.webhookRetrySeconds": "0.3",
            "i2v.webhookPollSeconds": 0.05,
        ]
        all.merge(values) { _, given in given }
        return try await makeTestApp(dataDir: dataDir, worker: worker, all)
    }

    /// What a receiver checks: the signature over `{id}.{timestamp}.{body}` with the secret's key, computed
    /// here with the HMAC primitive alone.
    static func verify(_ delivery: WebhookReceiver.Delivery, sourceLocation: SourceLocation = #_sourceLocation) {
        let id = delivery.headers["webhook-id"] ?? ""
        let timestamp = delivery.headers["webhook-timestamp"] ?? ""
        let key = SymmetricKey(data: Data(base64Encoded: String(referenceSecret.dropFirst("whsec_".count)))!)
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(id).\(timestamp).\(delivery.body)".utf8), using: key)
        #expect(delivery.headers["webhook-signature"] == "v1," + Data(mac).base64EncodedString(), sourceLocation: sourceLocation)
        #expect(id.hasPrefix("msg_"), sourceLocation: sourceLocation)
        #expect(abs((Double(timestamp) ?? 0) - Date().timeIntervalSince1970) < 3600, sourceLocation: sourceLocation)
        #expect(delivery.headers["content-type"] == "application/json", sourceLocation: sourceLocation)
    }

    static func json(_ body: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
    }

    /// 500, 500, then 200: delivered on the third attempt, every attempt under the same webhook-id and the
    /// same body, each signed; then counted in /metrics.
    @Test func deliveredOnTheThirdAttemptUnderOneID() async throws {
        let directory = try TemporaryDirectory()
        let receiver = WebhookReceiver(answers: [500, 500, 200])
        let app = try await Self.webhookApp(dataDir: directory.url, worker: FakeWorker())
        try await withWebhookReceiver(receiver) { image, hook in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: image, extra: #","webhook_url":"\#(hook)","webhook_events":["started","completed"]"#)
                _ = try await client.waitFor(id, status: "Succeed")
                let done = await eventually("three attempts of the completed event") {
                    await receiver.deliveries.filter { Self.json($0.body)["type"] as? String == "video.completed" }.count >= 3
                }
                let deliveries = await receiver.deliveries
                guard done else {
                    Issue.record("deliveries: \(deliveries.map { ($0.headers["webhook-id"] ?? "", $0.answered) })")
                    return
                }
                let completed = deliveries.filter { Self.json($0.body)["type"] as? String == "video.completed" }
                #expect(completed.map(\.answered) == [500, 500, 200])
                #expect(Set(completed.map { $0.headers["webhook-id"] ?? "" }).count == 1)
                #expect(Set(completed.map(\.body)).count == 1)
                completed.forEach { Self.verify($0) }
                let payload = Self.json(completed[0].body)
                let data = payload["data"] as? [String: Any]
                #expect(data?["requestId"] as? String == id && data?["status"] as? String == "Succeed")
                #expect(((data?["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"] != nil)
                #expect(
                    (payload["timestamp"] as? String).flatMap { try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse($0) } != nil, "\(payload)")
                #expect(deliveries.contains { Self.json($0.body)["type"] as? String == "video.started" })

                let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
                let recorded = await eventually("the delivery recorded") {
                    (try? await store.webhookMessages(taskID: id).first { $0.event == .completed }?.state) == .delivered
                }
                let message = try await store.webhookMessages(taskID: id).first { $0.event == .completed }
                #expect(recorded && message?.attempts == 3 && message?.lastStatus == 200, "\(String(describing: message))")
                #expect(message?.id == completed[0].headers["webhook-id"])
                let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                // Both messages (started, completed) were answered 500, 500, 200.
                #expect(metrics.contains(#"i2v_webhook_deliveries_total{outcome="retry"} 4"#), "\(metrics)")
                #expect(metrics.contains(#"i2v_webhook_deliveries_total{outcome="delivered"} 2"#))
                #expect(metrics.contains(#"i2v_webhook_deliveries_total{outcome="gave_up"} 0"#))
                #expect(metrics.contains("i2v_webhook_pending"))
            }
        }
    }

    /// The OpenAI API takes the same fields (multipart: the events as one comma-separated field), and a task
    /// deleted while queued still reports its cancel.
    @Test func openAISubmitsAndDeletedTasksReportTheirEvents() async throws {
        let directory = try TemporaryDirectory()
        let receiver = WebhookReceiver()
        let worker = FakeWorker(ready: false)
        let app = try await Self.webhookApp(dataDir: directory.url, worker: worker)
        try await withWebhookReceiver(receiver) { _, hook in
            try await app.test(.router) { client in
                let boundary = "i2v-webhook-boundary"
                var form = ""
                for (name, value) in [("prompt", "A dancing cat in the style of Van Gogh"), ("webhook_url", hook), ("webhook_events", "completed, cancelled")] {
                    form += "--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n"
                }
                var body = ByteBuffer(
                    string: form
                        + "--\(boundary)\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"i.png\"\r\nContent-Type: image/png\r\n\r\n")
                body.writeBytes(fixtureImage)
                body.writeString("\r\n--\(boundary)--\r\n")
                let created = try await client.execute(
                    uri: "/v1/videos", method: .post,
                    headers: [.authorization: "Bearer \(TestKeys.alice)", .contentType: "multipart/form-data; boundary=\(boundary)"],
                    body: body
                )
                #expect(created.status == .ok, "\(String(buffer: created.body))")
                let videoID = try #require(try created.jsonObject()["id"] as? String)
                let taskID = String(videoID.dropFirst("video_".count))
                let deleted = try await client.execute(uri: "/v1/videos/\(videoID)", method: .delete, headers: [.authorization: "Bearer \(TestKeys.alice)"])
                #expect(deleted.status == .ok)
                let arrived = await eventually("the cancelled event of the deleted task") {
                    await receiver.deliveries.contains { Self.json($0.body)["type"] as? String == "video.cancelled" }
                }
                let deliveries = await receiver.deliveries
                #expect(arrived && deliveries.count == 1, "\(deliveries.map(\.body))")
                guard let delivery = deliveries.first else { return }
                Self.verify(delivery)
                let data = Self.json(delivery.body)["data"] as? [String: Any]
                #expect(data?["requestId"] as? String == taskID && data?["status"] as? String == "Cancelled")
                #expect(data?["reason"] as? String == "deleted by the client")
                // Gone for its owner, as before.
                #expect(
                    try await client.execute(uri: "/v1/videos/\(videoID)", method: .get, headers: [.authorization: "Bearer \(TestKeys.alice)"]).status
                        == .notFound)
            }
        }
    }

    /// The outbox survives a restart: attempts that failed under one process are finished by the next, under
    /// the same webhook-id.
    @Test func aRestartBetweenAttemptsStillDelivers() async throws {
        let directory = try TemporaryDirectory()
        let receiver = WebhookReceiver(answers: [503])
        try await withWebhookReceiver(receiver) { image, hook in
            let first = try await Self.webhookApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.webhookRetrySeconds": "1"])
            let id = try await first.test(.router) { client in
                let id = try await client.submit(imageURL: image, extra: #","webhook_url":"\#(hook)""#)
                _ = try await client.waitFor(id, status: "Succeed")
                await eventually("a failed attempt") { await !receiver.deliveries.isEmpty }
                return id
            }
            let failedIDs = Set(await receiver.deliveries.map { $0.headers["webhook-id"] ?? "" })
            #expect(failedIDs.count == 1)
            await receiver.setAnswers([204])
            let second = try await Self.webhookApp(dataDir: directory.url, worker: FakeWorker())
            try await second.test(.router) { _ in
                let delivered = await eventually("a delivery after the restart") { await receiver.deliveries.contains { $0.answered == 204 } }
                let deliveries = await receiver.deliveries
                #expect(delivered, "\(deliveries.map { ($0.headers["webhook-id"] ?? "", $0.answered) })")
                let success = deliveries.first { $0.answered == 204 }
                #expect(success.map { failedIDs.contains($0.headers["webhook-id"] ?? "") } == true)
                #expect(success.map { Self.json($0.body)["type"] as? String } == "video.completed")
                success.map { Self.verify($0) }
                let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
                await eventually("the delivery recorded") { (try? await store.webhookMessages(taskID: id).first?.state) == .delivered }
            }
        }
    }

    /// A receiver that never answers holds only the delivery service's slot: submits are answered and tasks
    /// run and finish while its requests hang.
    @Test func aDeadReceiverDelaysNeitherSubmitsNorTasks() async throws {
        let directory = try TemporaryDirectory()
        let receiver = WebhookReceiver(stalling: true)
        let app = try await Self.webhookApp(
            dataDir: directory.url, worker: FakeWorker(),
            ["i2v.webhookConcurrency": 1, "i2v.webhookTimeoutSeconds": 600]
        )
        try await withWebhookReceiver(receiver) { image, hook in
            try await app.test(.router) { client in
                let first = try await client.submit(imageURL: image, extra: #","webhook_url":"\#(hook)","webhook_events":["started"]"#)
                await eventually("the receiver holding a delivery") { await !receiver.deliveries.isEmpty }
                // The only delivery slot is stuck in the receiver from here on.
                for _ in 0..<3 {
                    let id = try await client.submit(imageURL: image, extra: #","webhook_url":"\#(hook)""#)
                    let status = try await client.waitFor(id, status: "Succeed")
                    #expect(status["status"] as? String == "Succeed")
                }
                #expect(try await client.waitFor(first, status: "Succeed")["status"] as? String == "Succeed")
                #expect(await receiver.deliveries.count == 1)
                await receiver.release()
            }
        }
    }
}

/// Hands out the given addresses one lookup at a time (the last one repeats).
actor AddressSequence {
    private var addresses: [IPAddress]
    init(_ addresses: [IPAddress]) { self.addresses = addresses }
    func next() -> [IPAddress] { [addresses.count > 1 ? addresses.removeFirst() : addresses[0]] }
}
