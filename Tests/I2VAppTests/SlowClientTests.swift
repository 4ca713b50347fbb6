import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOPosix
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Clients that connect and then dawdle must not take the server from everyone else. These tests talk
/// to a live loopback server over raw sockets, as such clients do.
@Suite struct SlowClientTests {
    /// Timeouts long enough that nothing is closed for being slow unless a test means it to be.
    static let patient: [String: ConfigValue] = ["i2v.headerTimeoutSeconds": 600, "i2v.idleTimeoutSeconds": 600]

    @Test func healthAnswersWhileHundredsOfHalfRequestsAreHeld() async throws {
        try await withLiveApp(Self.patient) { port in
            var held: [RawConnection] = []
            for _ in 0..<300 {
                let connection = try await RawConnection.open(port: port)
                held.append(connection)
                try await connection.send("GET /heal")
            }

            let probe = try await RawConnection.open(port: port)
            try await probe.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            let response = try await outcome(of: probe.response, within: .seconds(60))
            #expect(response?.hasPrefix("HTTP/1.1 200") == true, "health answered: \(response ?? "nothing in 60 s")")
            #expect(held.filter { !$0.channel.isActive }.isEmpty, "the held connections should still be open")

            await probe.close()
            for connection in held { await connection.close() }
        }
    }

    @Test func aStalledRequestHeadIsAnswered408AndClosed() async throws {
        try await withLiveApp(["i2v.headerTimeoutSeconds": 1, "i2v.idleTimeoutSeconds": 600]) { port in
            let stalled = try await RawConnection.open(port: port, sending: "GET /health HTT")
            let received = try await outcome(of: stalled.closed, within: .seconds(30))
            #expect(received?.hasPrefix("HTTP/1.1 408") == true, "received: \(received ?? "no close in 30 s")")
            #expect(received.flatMap(rawFailureReason(in:)) == "request header timeout", "received: \(received ?? "")")

            // A connection that never says anything is closed without an answer.
            let silent = try await RawConnection.open(port: port)
            let silence = try await outcome(of: silent.closed, within: .seconds(30))
            #expect(silence == "", "received: \(silence ?? "no close in 30 s")")

            // The clock also runs for the second request on a connection, from its first byte.
            let keptAlive = try await RawConnection.open(port: port, sending: "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            let first = try await outcome(of: keptAlive.response, within: .seconds(30))
            #expect(first?.hasPrefix("HTTP/1.1 200") == true, "first response: \(first ?? "none in 30 s")")
            try await keptAlive.send("GET /hea")
            let rest = try await outcome(of: keptAlive.closed, within: .seconds(30))
            let afterFirst = rest.flatMap { all in first.map { String(all.dropFirst($0.count)) } }
            #expect(afterFirst?.hasPrefix("HTTP/1.1 408") == true, "after the first response: \(afterFirst ?? "no close in 30 s")")
        }
    }

    @Test func anIdleKeepAliveConnectionIsClosed() async throws {
        try await withLiveApp(["i2v.idleTimeoutSeconds": 1, "i2v.headerTimeoutSeconds": 600]) { port in
            let connection = try await RawConnection.open(port: port, sending: "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            let response = try await outcome(of: connection.response, within: .seconds(30))
            #expect(response?.hasPrefix("HTTP/1.1 200") == true, "response: \(response ?? "none in 30 s")")
            let received = try await outcome(of: connection.closed, within: .seconds(30))
            #expect(received != nil, "the idle connection was not closed within 30 s")
            // Closed quietly: nothing after the one response.
            #expect(received == response)
        }
    }

    @Test func connectionsOverTheCapAreClosedAndServedOnceSlotsFree() async throws {
        let cap = 20
        try await withLiveApp(Self.patient.merging(["i2v.maxConnections": .init(integerLiteral: cap)]) { $1 }) { port, client in
            // The test client keeps one connection of its own; a request pins it before counting.
            #expect(try await client.execute(uri: "/health", method: .get).status == .ok)
            var held: [RawConnection] = []
            for _ in 0..<(cap - 1) {
                let connection = try await RawConnection.open(port: port)
                held.append(connection)
                try await connection.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                let response = try await outcome(of: connection.response, within: .seconds(30))
                try #require(response?.hasPrefix("HTTP/1.1 200") == true, "under the cap: \(response ?? "no answer in 30 s")")
            }

            let refused = try await RawConnection.open(port: port)
            let received = try await outcome(of: refused.closed, within: .seconds(30))
            #expect(received == "", "over the cap: \(received ?? "still open after 30 s")")
            #expect(held.allSatisfy { $0.channel.isActive }, "the connections under the cap should stay open")

            // The server notices the closes on its own time; a bounded number of tries absorbs that.
            for connection in held { await connection.close() }
            var answer: String?
            let deadline = ContinuousClock.now + .seconds(60)
            for _ in 0..<100 where answer == nil && ContinuousClock.now < deadline {
                let fresh = try await RawConnection.open(port: port)
                try? await fresh.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = try? await outcome(of: fresh.response, within: .seconds(30))
                await fresh.close()
                if answer == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "once the held connections closed: \(answer ?? "never answered")")
        }
    }

    @Test func anOversizedRequestHeadIsAnswered431() async throws {
        try await withLiveApp { port in
            let connection = try await RawConnection.open(port: port)
            let filler = String(repeating: "a", count: 64 * 1024)
            try await connection.send("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Filler: \(filler)\r\n\r\n")
            let received = try await outcome(of: connection.closed, within: .seconds(30))
            let response = try #require(received, "the connection was not closed within 30 s")
            #expect(response.hasPrefix("HTTP/1.1 431 "), "received: \(response.prefix(300))")
            #expect(response.lowercased().contains("content-type: application/json"))
            #expect(rawFailureReason(in: response) == "request header fields too large", "received: \(response.prefix(300))")

            // A head well inside the limit is served as usual.
            let modest = try await RawConnection.open(port: port)
            let header = String(repeating: "b", count: 8 * 1024)
            try await modest.send("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Filler: \(header)\r\n\r\n")
            let answer = try await outcome(of: modest.response, within: .seconds(30))
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "received: \(answer ?? "nothing in 30 s")")
            await modest.close()
        }
    }
}

/// Clients that start a request body and then stall, trickle, hang up, cut it short or garble its
/// framing: each is answered for what it is (408, 400) or, when it went away, counted apart from the
/// server's own failures, and never holds its connection for long.
@Suite struct RequestBodyTests {
    static let alice = "Bearer \(TestKeys.alice)"
    static let boundary = "i2v-raw-boundary"

    /// The routes that read a body, each with a start of a body of its kind (never the whole of it).
    static let routes: [(path: String, contentType: String, start: String)] = [
        ("/video/submit", "application/json", #"{"prompt":"a cat dancing in the rain","#),
        ("/video/status", "application/json", #"{"requestId":"#),
        ("/video/cancel", "application/json", #"{"requestId":"#),
        ("/v1/videos", "application/json", #"{"prompt":"a cat dancing in the rain","#),
        ("/v1/videos", "multipart/form-data; boundary=\(boundary)", "--\(boundary)\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n"),
    ]

    static func head(_ path: String, contentType: String, length: Int? = nil) -> String {
        let framing = length.map { "Content-Length: \($0)" } ?? "Transfer-Encoding: chunked"
        return "POST \(path) HTTP/1.1\r\nHost: localhost\r\nAuthorization: \(alice)\r\nContent-Type: \(contentType)\r\n\(framing)\r\n\r\n"
    }

    @Test func aStalledBodyIsAnswered408AndClosedOnEveryRoute() async throws {
        let values: [String: ConfigValue] = [
            "i2v.bodyTimeoutSeconds": 2, "i2v.bodyMinBytesPerSecond": 0, "i2v.headerTimeoutSeconds": 600, "i2v.idleTimeoutSeconds": 600,
        ]
        try await withLiveApp(values) { port in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for route in Self.routes {
                    group.addTask {
                        let connection = try await RawConnection.open(port: port)
                        try await connection.send(Self.head(route.path, contentType: route.contentType, length: 100_000) + route.start)
                        let received = try await outcome(of: connection.closed, within: .seconds(60))
                        let answer = try #require(received, "\(route.path) (\(route.contentType)): still open after 60 s")
                        #expect(answer.hasPrefix("HTTP/1.1 408 "), "\(route.path) (\(route.contentType)): \(answer.prefix(300))")
                        #expect(answer.lowercased().contains("connection: close"))
                        let reason = "the request body was not complete within 2 seconds"
                        if route.path.hasPrefix("/v1/") {
                            #expect(rawOpenAIError(in: answer)?["code"] as? String == "request_timeout", "\(answer.prefix(400))")
                            #expect(rawOpenAIError(in: answer)?["message"] as? String == reason)
                        } else {
                            #expect(rawFailureReason(in: answer) == reason, "\(route.path): \(answer.prefix(400))")
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test func aTricklingBodyIsAnswered408AndASteadyOneIsNot() async throws {
        let values: [String: ConfigValue] = [
            "i2v.bodyTimeoutSeconds": 600, "i2v.bodyMinBytesPerSecond": 20, "i2v.bodyRateWindowSeconds": 2,
            "i2v.headerTimeoutSeconds": 600, "i2v.idleTimeoutSeconds": 600,
        ]
        try await withLiveApp(values) { port in
            for route in [Self.routes[0], Self.routes[4]] {
                let connection = try await RawConnection.open(port: port)
                try await connection.send(Self.head(route.path, contentType: route.contentType, length: 100_000))
                // One byte every 300 ms, far below 20 bytes a second, until the server hangs up.
                let trickle = Task {
                    for byte in route.start.utf8 {
                        try await Task.sleep(for: .milliseconds(300))
                        guard connection.channel.isActive else { return }
                        try? await connection.send(String(UnicodeScalar(byte)))
                    }
                }
                defer { trickle.cancel() }
                let received = try await outcome(of: connection.closed, within: .seconds(60))
                let answer = try #require(received, "\(route.path): still open after 60 s")
                #expect(answer.hasPrefix("HTTP/1.1 408 "), "\(route.path): \(answer.prefix(300))")
                #expect(answer.contains("the request body arrived slower than 20 bytes per second"), "\(answer.prefix(400))")
            }

            // A body in pieces with pauses between them, each piece more than a window's worth, is read whole.
            let steady = try await RawConnection.open(port: port)
            let body = #"{"requestId":"0123456789abcdef0123456789abcdef"}"# + String(repeating: " ", count: 200)
            try await steady.send(Self.head("/video/status", contentType: "application/json", length: body.utf8.count))
            for piece in [body.prefix(125), body.dropFirst(125)] {
                try await Task.sleep(for: .milliseconds(300))
                try await steady.send(String(piece))
            }
            let answer = try await outcome(of: steady.response, within: .seconds(60))
            #expect(answer?.hasPrefix("HTTP/1.1 404 ") == true, "steady body: \(answer ?? "no answer in 60 s")")
            await steady.close()
        }
    }

    @Test func aMalformedChunkedBodyIs400OnEveryRoute() async throws {
        try await withLiveApp(SlowClientTests.patient) { port, client in
            for route in Self.routes {
                for garbled in ["zz\r\nabc\r\n0\r\n\r\n", "5\r\nabc\r\n0\r\n\r\n"] {
                    let connection = try await RawConnection.open(port: port)
                    try await connection.send(Self.head(route.path, contentType: route.contentType) + garbled)
                    let received = try await outcome(of: connection.closed, within: .seconds(60))
                    let answer = try #require(received, "\(route.path) with \(garbled.debugDescription): still open after 60 s")
                    #expect(answer.hasPrefix("HTTP/1.1 400 "), "\(route.path) with \(garbled.debugDescription): \(answer.prefix(300))")
                    let reason =
                        route.path.hasPrefix("/v1/")
                        ? rawOpenAIError(in: answer)?["message"] as? String : rawFailureReason(in: answer)
                    #expect(reason?.hasPrefix("the request body is malformed") == true, "\(answer.prefix(400))")
                }
            }
            let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
            #expect(!metrics.contains(#"i2v_submit_rejections_total{status="500"}"#), "\(metrics)")
        }
    }

    @Test func aClientHangingUpMidUploadIsNotAServerError() async throws {
        try await withLiveApp(SlowClientTests.patient) { port, client in
            let submits = Self.routes.filter { $0.path == "/video/submit" || $0.path == "/v1/videos" }
            for route in submits {
                let connection = try await RawConnection.open(port: port)
                try await connection.send(Self.head(route.path, contentType: route.contentType, length: 100_000) + route.start)
                try await Task.sleep(for: .milliseconds(200))
                await connection.close()
            }
            // The server notices each hang-up on its own time; a bounded wait absorbs that.
            var metrics = ""
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                if metrics.contains(#"i2v_submit_rejections_total{status="client_closed"} \#(submits.count)"#) { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(metrics.contains(#"i2v_submit_rejections_total{status="client_closed"} \#(submits.count)"#), "\(metrics)")
            #expect(!metrics.contains(#"i2v_submit_rejections_total{status="500"}"#), "\(metrics)")
        }
    }

    @Test func aTruncatedMultipartBodyIs400ForItsFraming() async throws {
        try await withLiveApp(SlowClientTests.patient) { port in
            let boundary = Self.boundary
            // A whole HTTP body, but the form in it stops inside the image, before its closing boundary.
            let form =
                "--\(boundary)\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat dancing in the rain\r\n"
                + "--\(boundary)\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"cat.png\"\r\n"
                + "Content-Type: image/png\r\n\r\n\u{89}PNG"
            let connection = try await RawConnection.open(port: port)
            try await connection.send(
                Self.head("/v1/videos", contentType: "multipart/form-data; boundary=\(boundary)", length: form.utf8.count) + form
            )
            let answer = try await outcome(of: connection.response, within: .seconds(60))
            let response = try #require(answer, "no answer in 60 s")
            #expect(response.hasPrefix("HTTP/1.1 400 "), "\(response.prefix(300))")
            let error = rawOpenAIError(in: response)
            #expect(error?["code"] as? String == "invalid_multipart", "\(response.prefix(400))")
            #expect((error?["message"] as? String)?.contains("truncated") == true, "\(response.prefix(400))")
            await connection.close()
        }
    }

    /// An upload that stalls holds a few KiB of memory, not what it has sent: past its first 64 KiB it
    /// waits in an unlinked file (seen here through the process's open descriptors), which is gone once
    /// the client has hung up.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/proc/self/fd"), "needs /proc to see the spool's descriptors"))
    func aStalledUploadWaitsOnDiskNotInMemory() async throws {
        let directory = try TemporaryDirectory()
        let spool = directory.url.appending(path: "uploads").resolvingSymlinksInPath().path + "/"
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), SlowClientTests.patient)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let sent = 1 << 20
            let image = String(repeating: "A", count: sent)
            let uploads: [(contentType: String, start: String)] = [
                (
                    "multipart/form-data; boundary=\(Self.boundary)",
                    "--\(Self.boundary)\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"cat.png\"\r\n"
                        + "Content-Type: image/png\r\n\r\n" + image
                ),
                ("application/json", #"{"prompt":"a cat dancing in the rain","input_reference":{"image_url":"data:image/png;base64,"# + image),
            ]
            for upload in uploads {
                let connection = try await RawConnection.open(port: port)
                try await connection.send(Self.head("/v1/videos", contentType: upload.contentType, length: 4 * sent) + upload.start)
                // One file, holding all but (at most) the last 64 KiB received.
                await poll("\(upload.contentType): the upload's bytes in a spool file", { spooledFileSizes(under: spool) }) {
                    $0.count == 1 && $0[0] >= sent - BodySpool.memoryLimit
                }
                await connection.close()
                await poll("\(upload.contentType): the spool file closed once the client hung up", { spooledFileSizes(under: spool) }) {
                    $0.isEmpty
                }
            }
            // Unlinked while open: nothing was ever left to find in the directory.
            let left = (try? FileManager.default.contentsOfDirectory(atPath: spool)) ?? []
            #expect(left.isEmpty, "\(left)")
        }
    }

    @Test func connectionsOverThePerAddressCapAreClosedAndServedOnceSlotsFree() async throws {
        let cap = 4
        let values = SlowClientTests.patient.merging(["i2v.maxConnectionsPerAddress": .init(integerLiteral: cap)]) { $1 }
        try await withLiveApp(values) { port, client in
            // The test client keeps one connection of its own, from the same address; a request pins it.
            #expect(try await client.execute(uri: "/health", method: .get).status == .ok)
            var held: [RawConnection] = []
            for _ in 0..<(cap - 1) {
                let connection = try await RawConnection.open(port: port)
                held.append(connection)
                try await connection.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                let response = try await outcome(of: connection.response, within: .seconds(30))
                try #require(response?.hasPrefix("HTTP/1.1 200") == true, "under the cap: \(response ?? "no answer in 30 s")")
            }

            let refused = try await RawConnection.open(port: port)
            let received = try await outcome(of: refused.closed, within: .seconds(30))
            #expect(received == "", "over the cap: \(received ?? "still open after 30 s")")
            #expect(held.allSatisfy { $0.channel.isActive }, "the connections under the cap should stay open")

            await held[0].close()
            var answer: String?
            let deadline = ContinuousClock.now + .seconds(60)
            for _ in 0..<100 where answer == nil && ContinuousClock.now < deadline {
                let fresh = try await RawConnection.open(port: port)
                try? await fresh.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = try? await outcome(of: fresh.response, within: .seconds(30))
                await fresh.close()
                if answer == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "once a held connection closed: \(answer ?? "never answered")")
            for connection in held.dropFirst() { await connection.close() }
        }
    }
}

private func withLiveApp(
    _ values: [String: ConfigValue] = [:],
    _ body: @Sendable (_ port: Int) async throws -> Void
) async throws {
    try await withLiveApp(values) { port, _ in try await body(port) }
}

private func withLiveApp(
    _ values: [String: ConfigValue] = [:],
    _ body: @Sendable (_ port: Int, _ client: any TestClientProtocol) async throws -> Void
) async throws {
    let directory = try TemporaryDirectory()
    let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), values)
    try await app.test(.live) { client in
        try await body(try #require(client.port), client)
    }
}

/// The reason of a raw response whose body is exactly the service's `{"detail":{"status":"Failed","reason":…}}`.
private func rawFailureReason(in response: String) -> String? {
    guard let bodyStart = response.range(of: "\r\n\r\n")?.upperBound,
        let object = try? JSONSerialization.jsonObject(with: Data(response[bodyStart...].utf8)) as? [String: Any],
        object.keys.sorted() == ["detail"],
        let detail = object["detail"] as? [String: Any],
        detail.keys.sorted() == ["reason", "status"],
        detail["status"] as? String == "Failed"
    else { return nil }
    return detail["reason"] as? String
}

/// The `error` object of a raw response whose body is OpenAI's `{"error":{"message","type","param","code"}}`.
private func rawOpenAIError(in response: String) -> [String: Any]? {
    guard let bodyStart = response.range(of: "\r\n\r\n")?.upperBound,
        let object = try? JSONSerialization.jsonObject(with: Data(response[bodyStart...].utf8)) as? [String: Any],
        object.keys.sorted() == ["error"],
        let error = object["error"] as? [String: Any],
        error.keys.sorted() == ["code", "message", "param", "type"]
    else { return nil }
    return error
}

/// The sizes of the files this process holds open under `directory` (unlinked ones included), from
/// /proc/self/fd.
private func spooledFileSizes(under directory: String) -> [Int] {
    let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return descriptors.compactMap { descriptor in
        let link = "/proc/self/fd/\(descriptor)"
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: link), target.hasPrefix(directory) else {
            return nil
        }
        var status = stat()
        guard stat(link, &status) == 0 else { return nil }
        return Int(status.st_size)
    }
}

/// Polls `probe` until `done` holds for what it returns, and returns the last value; a wait that runs out
/// records one issue with that value.
@discardableResult
private func poll<T>(
    _ what: String,
    timeout: Duration = .seconds(60),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ probe: () async -> T,
    until done: (T) -> Bool
) async -> T {
    let deadline = ContinuousClock.now + timeout
    while true {
        let value = await probe()
        if done(value) { return value }
        if ContinuousClock.now > deadline {
            Issue.record("\(what): not within \(timeout); last seen: \(value)", sourceLocation: sourceLocation)
            return value
        }
        try? await Task.sleep(for: .milliseconds(50))
    }
}

/// Waits for `future` at most `limit`; nil when it did not complete in time.
private func outcome<T: Sendable>(of future: EventLoopFuture<T>, within limit: TimeAmount) async throws -> T? {
    let promise = future.eventLoop.makePromise(of: T?.self)
    future.whenComplete { promise.completeWith($0.map { Optional($0) }) }
    let timer = future.eventLoop.scheduleTask(in: limit) { promise.succeed(nil) }
    defer { timer.cancel() }
    return try await promise.futureResult.get()
}

/// A loopback connection that sends what a test gives it and records what the server sends back.
private struct RawConnection: Sendable {
    let channel: any Channel
    /// The first complete response (head, and as much body as it declares).
    let response: EventLoopFuture<String>
    /// Everything the server sent, once the connection is closed.
    let closed: EventLoopFuture<String>

    /// `first` is written the moment the connection is up, on its event loop: a server clock that runs from
    /// the connection's opening (header, idle) then never races a busy machine's delay before a later send.
    static func open(port: Int, sending first: String? = nil) async throws -> RawConnection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(30))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let recorder = Recorder(eventLoop: channel.eventLoop, first: first)
                    try channel.pipeline.syncOperations.addHandler(recorder)
                    return RawConnection(channel: channel, response: recorder.response.futureResult, closed: recorder.closed.futureResult)
                }
            }
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    func close() async {
        try? await channel.close()
    }

    struct ClosedBeforeResponse: Error {
        var received: String
    }

    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        let response: EventLoopPromise<String>
        let closed: EventLoopPromise<String>
        private var received = ""
        private let first: String?

        init(eventLoop: any EventLoop, first: String? = nil) {
            response = eventLoop.makePromise()
            closed = eventLoop.makePromise()
            self.first = first
        }

        func channelActive(context: ChannelHandlerContext) {
            if let first { context.writeAndFlush(NIOAny(ByteBuffer(string: first)), promise: nil) }
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            if let complete = Self.firstResponse(in: received) { response.succeed(complete) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            response.fail(ClosedBeforeResponse(received: received))
            closed.succeed(received)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // A reset ends the connection like a close does; what arrived before it is kept.
            context.close(promise: nil)
        }

        static func firstResponse(in text: String) -> String? {
            let bytes = Array(text.utf8)
            let separator = Array("\r\n\r\n".utf8)
            guard bytes.count >= separator.count,
                let headEnd = (0...(bytes.count - separator.count)).first(where: { bytes[$0..<$0 + separator.count].elementsEqual(separator) })
            else { return nil }
            let head = String(decoding: bytes[..<headEnd], as: UTF8.self)
            let length =
                head.split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            let end = headEnd + separator.count + length
            guard bytes.count >= end else { return nil }
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }
}
