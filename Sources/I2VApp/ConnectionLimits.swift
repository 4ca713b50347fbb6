import Foundation
import HTTPTypes
import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import Synchronization
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VStorePostgres
import I2VStoreSQLite
import I2VWebhooks

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ServiceConfiguration {
    /// HTTP/1 with the slow-client limits, so held connections cannot starve everyone else.
    ///
    /// Hummingbird's idle timeout only counts time without a complete HTTP part, so a client trickling a
    /// request head would hold its connection for the whole idle timeout; `RequestHeadGuard` cuts that to
    /// the header timeout. Heads over `maxHeaderBytes` make the decoder fail, which the guard answers with
    /// a 431 in the service's error format instead of Hummingbird's bare 400. `ConnectionSlot` keeps the
    /// open connections under `maxConnections`, so they cannot take the last file descriptors.
    func makeHTTPServer() -> HTTPServerBuilder {
        let slots = ConnectionSlots(limit: maxConnections)
        let headerTimeout = TimeAmount(self.headerTimeout)
        let maxHeaderBytes = self.maxHeaderBytes
        return .http1(
            configuration: HTTP1Channel.Configuration(
                additionalChannelHandlers: [ConnectionSlot(slots), RequestHeadGuard(timeout: headerTimeout)],
                idleTimeout: TimeAmount(self.idleTimeout),
                httpDecoderConfiguration: .init(maxHeaderFieldSize: maxHeaderBytes, maxHeaderListSize: maxHeaderBytes)
            )
        )
    }
}

/// Open connections, shared by all of them.
///
/// Counted per connection rather than with Hummingbird's `availableConnectionsDelegate`, which pauses
/// accepting instead: `ApplicationConfiguration.with(address:)` drops that delegate, so a server run
/// through HummingbirdTesting would have no cap at all.
final class ConnectionSlots: Sendable {
    let limit: Int
    private let open = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = limit
    }

    func take() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue <= limit { return true }
        open.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    func release() {
        open.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// Holds a slot for as long as its connection is open, or closes the connection as soon as it is up when
/// none is free: the descriptor comes back at once, and the connections already open keep being served.
final class ConnectionSlot: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart

    private let slots: ConnectionSlots
    private var refused = false

    init(_ slots: ConnectionSlots) {
        self.slots = slots
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard slots.take() else {
            refused = true
            if context.channel.isActive { context.close(promise: nil) }
            return
        }
        context.channel.closeFuture.whenComplete { [slots] _ in slots.release() }
    }

    func channelActive(context: ChannelHandlerContext) {
        if refused {
            context.close(promise: nil)
        } else {
            context.fireChannelActive()
        }
    }
}

/// The default connection cap: 4096, or less where the open-file limit would run out first. Each
/// connection may hold a second descriptor (the video it streams, the image download its submit started),
/// and the store, the worker's pipes and the logs need some of their own.
func defaultMaxConnections() -> Int {
    var limit = rlimit()
    #if canImport(Glibc)
    let status = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    #else
    let status = getrlimit(RLIMIT_NOFILE, &limit)
    #endif
    guard status == 0 else { return 4096 }
    return min(4096, max(64, (Int(clamping: limit.rlim_cur) - 128) / 2))
}

/// Behind the HTTP decoder, the only place Hummingbird lets us add handlers: it tells `RequestHeadClock`
/// where requests and responses begin and end, and turns the decoder's header overflow into a 431.
final class RequestHeadGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    private var clock: RequestHeadClock?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Only raw bytes tell when a head started arriving, so the clock goes ahead of the decoder.
        let clock = RequestHeadClock(timeout: timeout)
        do {
            try context.pipeline.syncOperations.addHandler(clock, position: .first)
            self.clock = clock
        } catch {
            context.fireErrorCaught(error)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: clock?.headReceived()
        case .body: break
        case .end: clock?.requestEnded()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd = if case .end = unwrapOutboundIn(data) { true } else { false }
        context.write(data, promise: promise)
        if isEnd { clock?.responseEnded() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case HTTPParserError.headerOverflow = error, let clock {
            clock.reject(.requestHeaderFieldsTooLarge, "request header fields too large")
        } else {
            context.fireErrorCaught(error)
        }
    }
}

/// Ahead of the HTTP decoder: closes a connection whose request head is not complete `timeout` after
/// its first byte (or, for the first request, after connecting), and writes the 408 and 431 answers
/// straight to the socket. A head whose first bytes came in the same read as the end of the request
/// before it is left to the idle timeout.
final class RequestHeadClock: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let timeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var awaitingHead = true
    /// Part of the awaited head has arrived: a client that stalls then hears why it is cut off.
    private var headStarted = false
    private var responsesOwed = 0
    private var answered = false
    /// The head deadline, or once answered, the end of the drain.
    private var scheduled: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { startClock() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelScheduled()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startClock()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelScheduled()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Answered, and the client has stopped sending: the drain is over.
        if answered, case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Once answered, what the client still sends is drained, not decoded.
        guard !answered else { return }
        if awaitingHead, unwrapInboundIn(data).readableBytes > 0 {
            headStarted = true
            startClock()
        }
        context.fireChannelRead(data)
    }

    func headReceived() {
        awaitingHead = false
        headStarted = false
        responsesOwed += 1
        cancelScheduled()
    }

    func requestEnded() {
        awaitingHead = true
    }

    func responseEnded() {
        responsesOwed -= 1
        // A deadline that passed while we were still answering earlier requests starts over: the client
        // may simply have been waiting on us.
        if responsesOwed == 0, headStarted { startClock() }
    }

    /// Answers and closes when no response is under way; otherwise a clean answer is impossible and the
    /// connection is just closed.
    func reject(_ status: HTTPResponse.Status, _ reason: String) {
        guard let context, !answered else { return }
        if responsesOwed == 0 {
            answerAndClose(context: context, status: status, reason: reason)
        } else {
            context.close(promise: nil)
        }
    }

    private func startClock() {
        guard awaitingHead, !answered, scheduled == nil, let context else { return }
        scheduled = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            scheduled = nil
            guard awaitingHead, responsesOwed == 0, !answered else { return }
            if headStarted {
                answerAndClose(context: context, status: .requestTimeout, reason: "request header timeout")
            } else {
                context.close(promise: nil)
            }
        }
    }

    private func cancelScheduled() {
        scheduled?.cancel()
        scheduled = nil
    }

    private func answerAndClose(context: ChannelHandlerContext, status: HTTPResponse.Status, reason: String) {
        answered = true
        cancelScheduled()
        let body = (try? JSONBody.encoder.encode(ErrorBody(detail: .init(reason: reason)))) ?? Data()
        var buffer = context.channel.allocator.buffer(capacity: 160 + body.count)
        buffer.writeString(
            "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: application/json\r\ncontent-length: \(body.count)\r\nconnection: close\r\n\r\n"
        )
        buffer.writeBytes(body)
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(buffer), promise: written)
        written.futureResult.assumeIsolated().whenComplete { [self] _ in
            guard self.context != nil else { return }
            // Half-close and drain for a moment: closing with unread request bytes would reset the
            // connection, and the client could lose the answer.
            context.close(mode: .output, promise: nil)
            scheduled = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) {
                context.close(promise: nil)
            }
        }
    }

    /// The body `APIError` renders.
    private struct ErrorBody: Encodable {
        struct Detail: Encodable {
            var status = "Failed"
            var reason: String
        }
        var detail: Detail
    }
}
