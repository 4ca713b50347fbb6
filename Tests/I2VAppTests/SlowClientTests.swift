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
            let stalled = try await RawConnection.open(port: port)
            try await stalled.send("GET /health HTT")
            let received = try await outcome(of: stalled.closed, within: .seconds(30))
            #expect(received?.hasPrefix("HTTP/1.1 408") == true, "received: \(received ?? "no close in 30 s")")
            #expect(received.flatMap(rawFailureReason(in:)) == "request header timeout", "received: \(received ?? "")")

            // A connection that never says anything is closed without an answer.
            let silent = try await RawConnection.open(port: port)
            let silence = try await outcome(of: silent.closed, within: .seconds(30))
            #expect(silence == "", "received: \(silence ?? "no close in 30 s")")

            // The clock also runs for the second request on a connection, from its first byte.
            let keptAlive = try await RawConnection.open(port: port)
            try await keptAlive.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
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
            let connection = try await RawConnection.open(port: port)
            try await connection.send("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
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

    static func open(port: Int) async throws -> RawConnection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(30))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let recorder = Recorder(eventLoop: channel.eventLoop)
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

        init(eventLoop: any EventLoop) {
            response = eventLoop.makePromise()
            closed = eventLoop.makePromise()
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
            let length = head.split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            let end = headEnd + separator.count + length
            guard bytes.count >= end else { return nil }
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }
}
