import Hummingbird
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A Hummingbird server on 127.0.0.1, port 0, for the length of `body`.
func withTestServer<T: Sendable>(
    _ routes: (Router<BasicRequestContext>) -> Void,
    _ body: @Sendable (_ port: Int) async throws -> T
) async throws -> T {
    let router = Router()
    routes(router)
    let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
    var logger = Logger(label: "image-intake-test-server")
    logger.logLevel = .critical
    let app = Application(
        router: router,
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in
            portContinuation.yield(channel.localAddress?.port ?? 0)
            portContinuation.finish()
        },
        logger: logger
    )
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await app.run()
            return nil
        }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            group.cancelAll()
            throw TestServerError.noPort
        }
        do {
            let value = try await body(port)
            group.cancelAll()
            return value
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

enum TestServerError: Error {
    case noPort
}

/// A bare TCP server on 127.0.0.1 that answers every connection, once it has received anything, with
/// fixed bytes (or never answers), then optionally closes: for responses no HTTP server would send
/// (close-delimited bodies, lying Content-Length, silence).
func withRawServer<T: Sendable>(
    response: [UInt8]?,
    closeAfterResponse: Bool = true,
    _ body: @Sendable (_ port: Int) async throws -> T
) async throws -> T {
    let children = ChildChannels()
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
            children.add(channel)
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    CannedResponder(response: response, closeAfterResponse: closeAfterResponse)
                )
            }
        }
        .bind(host: "127.0.0.1", port: 0)
        .get()
    let port = server.localAddress?.port ?? 0
    do {
        let value = try await body(port)
        try? await server.close()
        children.closeAll()
        return value
    } catch {
        try? await server.close()
        children.closeAll()
        throw error
    }
}

private final class ChildChannels: Sendable {
    private let channels = Mutex<[any Channel]>([])

    func add(_ channel: any Channel) {
        channels.withLock { $0.append(channel) }
    }

    func closeAll() {
        for channel in channels.withLock({ $0 }) {
            channel.close(promise: nil)
        }
    }
}

private final class CannedResponder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let response: [UInt8]?
    let closeAfterResponse: Bool
    var responded = false

    init(response: [UInt8]?, closeAfterResponse: Bool) {
        self.response = response
        self.closeAfterResponse = closeAfterResponse
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !responded, let response else { return }
        responded = true
        let buffer = context.channel.allocator.buffer(bytes: response)
        let close = closeAfterResponse
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
            if close {
                loopBound.value.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// An HTTP/1.1 response head followed by a body, as raw bytes.
func rawHTTPResponse(status: String = "200 OK", headers: [(String, String)], body: [UInt8]) -> [UInt8] {
    var head = "HTTP/1.1 \(status)\r\n"
    for (name, value) in headers {
        head += "\(name): \(value)\r\n"
    }
    head += "\r\n"
    return Array(head.utf8) + body
}
