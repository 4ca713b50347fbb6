import Foundation
import HTTPTypes
import HummingbirdCore
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VStorePostgres
import I2VStoreSQLite
import I2VWebhooks
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import Synchronization

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
    /// request head or body would hold its connection (and what its body has sent so far) for the whole
    /// idle timeout, or for ever while it keeps trickling; `RequestHeadGuard` cuts a head off at the header
    /// timeout and a body at the body timeout or below the minimum rate. Heads over `maxHeaderBytes` make
    /// the decoder fail, which the guard answers with a 431 in the service's error format instead of
    /// Hummingbird's bare 400. `ConnectionSlot` keeps the open connections under `maxConnections`, and
    /// under `maxConnectionsPerAddress` for each client address, so they cannot take the last file
    /// descriptors, and one client cannot take all of them.
    func makeHTTPServer() -> HTTPServerBuilder {
        let slots = ConnectionSlots(limit: maxConnections, perAddress: maxConnectionsPerAddress)
        let headerTimeout = TimeAmount(self.headerTimeout)
        let body = RequestBodyLimits(
            timeout: TimeAmount(bodyTimeout),
            minBytesPerSecond: bodyMinBytesPerSecond,
            window: TimeAmount(bodyRateWindow)
        )
        let maxHeaderBytes = self.maxHeaderBytes
        return .http1(
            configuration: HTTP1Channel.Configuration(
                additionalChannelHandlers: [ConnectionSlot(slots), RequestHeadGuard(timeout: headerTimeout, body: body)],
                idleTimeout: TimeAmount(self.idleTimeout),
                httpDecoderConfiguration: .init(maxHeaderFieldSize: maxHeaderBytes, maxHeaderListSize: maxHeaderBytes)
            )
        )
    }
}

/// Open connections, shared by all of them, in all and per client address.
///
/// Counted per connection rather than with Hummingbird's `availableConnectionsDelegate`, which pauses
/// accepting instead: `ApplicationConfiguration.with(address:)` drops that delegate, so a server run
/// through HummingbirdTesting would have no cap at all.
final class ConnectionSlots: Sendable {
    let limit: Int
    /// 0: no cap per address.
    let perAddressLimit: Int
    private let open = Atomic<Int>(0)
    private let openByAddress = Mutex<[ClientAddress: Int]>([:])

    init(limit: Int, perAddress: Int = 0) {
        self.limit = limit
        self.perAddressLimit = perAddress
    }

    func take(for address: ClientAddress?) -> Bool {
        guard open.wrappingAdd(1, ordering: .relaxed).newValue <= limit else {
            open.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        guard perAddressLimit > 0, let address else { return true }
        let taken = openByAddress.withLock { counts in
            let count = counts[address, default: 0]
            guard count < perAddressLimit else { return false }
            counts[address] = count + 1
            return true
        }
        if !taken { open.wrappingSubtract(1, ordering: .relaxed) }
        return taken
    }

    func release(for address: ClientAddress?) {
        open.wrappingSubtract(1, ordering: .relaxed)
        guard perAddressLimit > 0, let address else { return }
        openByAddress.withLock { counts in
            // Removed at zero, so the table only ever holds the addresses with connections open.
            let count = counts[address, default: 0]
            counts[address] = count > 1 ? count - 1 : nil
        }
    }
}

/// What the per-address cap counts by: an IPv4 address, or an IPv6 /64 (the smallest network a host is
/// usually given, so one host cannot pass the cap by using more of its own addresses).
enum ClientAddress: Hashable, Sendable {
    case v4(UInt32)
    case v6(UInt64)

    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4)?:
            self = .v4(UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6)?:
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            guard bytes.count == 16 else { return nil }
            // An IPv4 client of a dual-stack socket (::ffff:a.b.c.d) is that IPv4 address.
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
                self = .v4(bytes[12..<16].reduce(0) { $0 << 8 | UInt32($1) })
            } else {
                self = .v6(bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
            }
        default:
            return nil
        }
    }
}

/// Holds a slot for as long as its connection is open, or closes the connection as soon as it is up when
/// none is free, in all or for its client's address: the descriptor comes back at once, and the
/// connections already open keep being served.
final class ConnectionSlot: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart

    private let slots: ConnectionSlots
    private var refused = false

    init(_ slots: ConnectionSlots) {
        self.slots = slots
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let address = ClientAddress(context.channel.remoteAddress)
        guard slots.take(for: address) else {
            refused = true
            if context.channel.isActive { context.close(promise: nil) }
            return
        }
        context.channel.closeFuture.whenComplete { [slots] _ in slots.release(for: address) }
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

/// How long a request body may keep the server waiting for it, and how slowly it may arrive.
struct RequestBodyLimits: Sendable {
    var timeout: TimeAmount
    /// 0: no minimum.
    var minBytesPerSecond: Int
    var window: TimeAmount

    /// How often a body's progress is looked at: a fraction of the shorter limit, so a cut comes close to
    /// it, and at most once a second, so thousands of uploads cost next to nothing.
    var checkInterval: TimeAmount {
        let shorter = minBytesPerSecond > 0 ? min(timeout, window) : timeout
        return min(.seconds(1), max(.milliseconds(10), .nanoseconds(shorter.nanoseconds / 4)))
    }
}

/// Behind the HTTP decoder, the only place Hummingbird lets us add handlers: it tells `RequestHeadClock`
/// where requests and responses begin and end, turns the decoder's header overflow into a 431, and times
/// request bodies.
///
/// A body is timed only while the server is asking for its bytes: when a route is not reading yet and
/// its buffer is full, reads stop and so does the clock, so a busy server never blames the client. A
/// body that takes longer than the limits, or whose framing is malformed, is answered (408, 400) and the
/// connection closed; the route reading it gets a `RequestBodyError` once the connection is down, so the
/// answer is not cut short by the route's own close.
final class RequestHeadGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    private let limits: RequestBodyLimits
    private var clock: RequestHeadClock?
    /// The request whose body is still arriving.
    private var body: BodyProgress?
    /// The server has asked for bytes and not had them yet: time in this state is the client's.
    private var awaitingClient = false
    private var check: Scheduled<Void>?

    private struct BodyProgress {
        var openAIStyle: Bool
        var mark: NIODeadline
        var waited: TimeAmount = .zero
        var windowWaited: TimeAmount = .zero
        var windowBytes = 0
        /// Set once the body is cut off: what the route will be told.
        var failure: RequestBodyError?
        /// The route has been told; nothing more of this body is passed on.
        var reported = false
    }

    init(timeout: TimeAmount, body: RequestBodyLimits) {
        self.timeout = timeout
        self.limits = body
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

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A body cut off ends with its error, never with whatever parts were still in flight.
        if let body, body.failure != nil || body.reported { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            clock?.headReceived()
            body = BodyProgress(openAIStyle: head.path.map(Self.isOpenAIPath) ?? false, mark: .now())
        case .body(let bytes):
            body?.windowBytes += bytes.readableBytes
        case .end:
            body = nil
            check?.cancel()
            check = nil
            clock?.requestEnded()
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        account()
        awaitingClient = false
        if body != nil, check == nil { scheduleCheck(context: context) }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        account()
        awaitingClient = true
        context.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let part = unwrapOutboundIn(data)
        context.write(data, promise: promise)
        switch part {
        case .head: clock?.responseStarted()
        case .body: break
        case .end: clock?.responseEnded()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird would end the body as if it were complete: it is not.
        if case ChannelEvent.inputClosed = event { reportBody(context: context, default: .clientClosed) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
        reportBody(context: context, default: .clientClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case HTTPParserError.headerOverflow:
            if let clock {
                clock.reject(.requestHeaderFieldsTooLarge, "request header fields too large")
            } else {
                context.fireErrorCaught(error)
            }
        case HTTPParserError.invalidEOFState where body != nil:
            // The client half-closed in the middle of the body.
            reportBody(context: context, default: .clientClosed)
        case let parserError as HTTPParserError where body != nil:
            cut(context: context, .malformed("the request body is malformed: \(Self.describe(parserError))"))
        case is IOError where body != nil:
            // A reset in the middle of the body.
            reportBody(context: context, default: .clientClosed)
        default:
            context.fireErrorCaught(error)
        }
    }

    private static func isOpenAIPath(_ path: String) -> Bool {
        path == "/v1" || path.hasPrefix("/v1/") || path.hasPrefix("/v1?")
    }

    private static func describe(_ error: HTTPParserError) -> String {
        switch error {
        case .invalidChunkSize: "a chunk size is not a hexadecimal number"
        case .lfExpected, .strictModeAssertion: "a chunk does not end where its size says"
        case .unknown: "invalid HTTP framing"
        default: "invalid HTTP framing (\(error))"
        }
    }

    /// Adds the time since the last look to the body's waiting time, if the server was waiting on the client.
    private func account() {
        guard var progress = body, progress.failure == nil else { return }
        let now = NIODeadline.now()
        if awaitingClient {
            let elapsed = now - progress.mark
            progress.waited = progress.waited + elapsed
            progress.windowWaited = progress.windowWaited + elapsed
        }
        progress.mark = now
        body = progress
    }

    private func scheduleCheck(context: ChannelHandlerContext) {
        check = context.eventLoop.assumeIsolated().scheduleTask(in: limits.checkInterval) { [self] in
            check = nil
            checkBody(context: context)
        }
    }

    private func checkBody(context: ChannelHandlerContext) {
        account()
        guard var progress = body, progress.failure == nil else { return }
        if progress.waited >= limits.timeout {
            cut(context: context, .timedOut("the request body was not complete within \(Self.seconds(limits.timeout)) seconds"))
            return
        }
        if limits.minBytesPerSecond > 0, progress.windowWaited >= limits.window {
            let needed = Double(limits.minBytesPerSecond) * Double(progress.windowWaited.nanoseconds) / 1e9
            if Double(progress.windowBytes) < needed {
                cut(
                    context: context,
                    .timedOut("the request body arrived slower than \(limits.minBytesPerSecond) bytes per second")
                )
                return
            }
            progress.windowWaited = .zero
            progress.windowBytes = 0
            body = progress
        }
        scheduleCheck(context: context)
    }

    private static func seconds(_ amount: TimeAmount) -> String {
        let seconds = Double(amount.nanoseconds) / 1e9
        return seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }

    /// Answers (or, with a response under way, just closes), and keeps the route's error for the close.
    private func cut(context: ChannelHandlerContext, _ failure: RequestBodyError) {
        guard let progress = body, progress.failure == nil, !progress.reported else { return }
        body?.failure = failure
        check?.cancel()
        check = nil
        if let clock {
            clock.rejectBody(
                failure.status,
                failure.reason,
                style: progress.openAIStyle ? .openAI(code: failure.openAICode) : .native
            )
        } else {
            reportBody(context: context, default: failure)
            context.close(promise: nil)
        }
    }

    /// Tells the route reading the body that it will not get the rest, once.
    private func reportBody(context: ChannelHandlerContext, default failure: RequestBodyError) {
        guard let progress = body, !progress.reported else { return }
        body?.reported = true
        context.fireErrorCaught(progress.failure ?? failure)
    }
}

/// Ahead of the HTTP decoder: closes a connection whose request head is not complete `timeout` after
/// its first byte (or, for the first request, after connecting), and writes the 408, 431 and body 400
/// answers straight to the socket. A head whose first bytes came in the same read as the end of the
/// request before it is left to the idle timeout.
final class RequestHeadClock: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// The shape of an answer's body: the seed API's, or OpenAI's under `/v1`.
    enum ErrorStyle {
        case native
        case openAI(code: String)
    }

    private let timeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var awaitingHead = true
    /// Part of the awaited head has arrived: a client that stalls then hears why it is cut off.
    private var headStarted = false
    private var responsesOwed = 0
    /// Part of a response has been written, so another answer cannot go in front of it.
    private var responseUnderway = false
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

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Once answered, a route's late response would follow ours as a second one. It is dropped as if
        // sent, so Hummingbird waits for the drain to end rather than closing at once.
        guard !answered else {
            promise?.succeed()
            return
        }
        context.write(data, promise: promise)
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

    func responseStarted() {
        responseUnderway = true
    }

    func responseEnded() {
        responseUnderway = false
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

    /// For a request whose body is cut off: answers and closes while its response has not begun (and no
    /// earlier one is still going out); otherwise just closes.
    func rejectBody(_ status: HTTPResponse.Status, _ reason: String, style: ErrorStyle) {
        guard let context, !answered else { return }
        if responsesOwed == 1, !responseUnderway {
            answerAndClose(context: context, status: status, reason: reason, style: style)
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

    private func answerAndClose(
        context: ChannelHandlerContext,
        status: HTTPResponse.Status,
        reason: String,
        style: ErrorStyle = .native
    ) {
        answered = true
        cancelScheduled()
        let body: Data =
            switch style {
            case .native:
                (try? JSONBody.encoder.encode(ErrorBody(detail: .init(reason: reason)))) ?? Data()
            case .openAI(let code):
                (try? JSONBody.encoder.encode(OpenAIErrorBody(error: .init(message: reason, code: code)))) ?? Data()
            }
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

    /// The body `OpenAIError` renders, for a 4xx (`param` is always null here).
    private struct OpenAIErrorBody: Encodable {
        struct Detail: Encodable {
            var message: String
            var code: String

            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(message, forKey: .message)
                try container.encode("invalid_request_error", forKey: .type)
                try container.encodeNil(forKey: .param)
                try container.encode(code, forKey: .code)
            }

            enum CodingKeys: String, CodingKey { case message, type, param, code }
        }
        var error: Detail
    }
}
