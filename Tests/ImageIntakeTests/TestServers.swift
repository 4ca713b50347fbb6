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
