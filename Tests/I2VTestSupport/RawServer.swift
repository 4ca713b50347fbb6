import NIOCore
import NIOPosix
import Synchronization

/// A bare TCP server on 127.0.0.1 that answers each connection, once it has received anything, with fixed
/// bytes (or never), then closes it (or keeps it open): for responses no HTTP server would send
/// (close-delimited bodies, lying Content-Length, silence).
public final class RawServer: Sendable {
    public let port: Int
    private let server: any Channel
    private let accepted: ChildList

    private init(port: Int, server: any Channel, accepted: ChildList) {
        self.port = port
        self.server = server
        self.accepted = accepted
    }

    public static func start(response: [UInt8]?, closeAfterResponse: Bool = true) async throws -> RawServer {
        let accepted = ChildList()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.add(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Responder(response: response, closeAfterResponse: closeAfterResponse))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return RawServer(port: server.localAddress?.port ?? 0, server: server, accepted: accepted)
    }

    public func close() {
        server.close(promise: nil)
        for channel in accepted.all { channel.close(promise: nil) }
    }
}

private final class ChildList: Sendable {
    private let channels = Mutex<[any Channel]>([])
    func add(_ channel: any Channel) { channels.withLock { $0.append(channel) } }
    var all: [any Channel] { channels.withLock { $0 } }
}

private final class Responder: ChannelInboundHandler {
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
        let close = closeAfterResponse
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: response))).whenComplete { _ in
            if close { loopBound.value.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A raw server for the length of `body`.
public func withRawServer<T: Sendable>(
    response: [UInt8]?,
    closeAfterResponse: Bool = true,
    _ body: @Sendable (_ port: Int) async throws -> T
) async throws -> T {
    let server = try await RawServer.start(response: response, closeAfterResponse: closeAfterResponse)
    defer { server.close() }
    return try await body(server.port)
}

/// An HTTP/1.1 response head followed by a body, as raw bytes.
public func rawHTTPResponse(status: String = "200 OK", headers: [(String, String)], body: [UInt8]) -> [UInt8] {
    var head = "HTTP/1.1 \(status)\r\n"
    for (name, value) in headers {
        head += "\(name): \(value)\r\n"
    }
    head += "\r\n"
    return Array(head.utf8) + body
}
