import Foundation
import I2VCore
import Logging
import PostgresNIO
import ServiceLifecycle

/// Listens on the store's notification channel on a connection of its own and wakes the dispatcher for
/// each notification: a submit on any API node starts an idle worker node at once, and a cancel reaches
/// the node running the task without waiting for its next poll. A dropped connection is reopened with a
/// growing pause; meanwhile the dispatcher's poll keeps everything moving, only later.
package struct PostgresNotifications: Service {
    package let endpoint: PostgresEndpoint
    package let signal: DispatchSignal
    package let logger: Logger

    package func run() async throws {
        var pause = Duration.milliseconds(500)
        var warned = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: try endpoint.connectionConfiguration(),
                    id: 1,
                    logger: logger
                )
                if warned { logger.info("listening for task notifications again") }
                warned = false
                pause = .milliseconds(500)
                let signal = self.signal
                do {
                    try await cancelWhenGracefulShutdown {
                        try await connection.listen(on: PostgresTaskStore.notificationChannel) { notifications in
                            // Whatever was missed while the connection was down is picked up by this wake-up.
                            signal.wake()
                            for try await _ in notifications { signal.wake() }
                        }
                    }
                } catch {
                    try? await connection.close()
                    throw error
                }
                try? await connection.close()
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                if !warned {
                    logger.warning("task notifications unavailable; polling until they are back", metadata: ["error": "\(PostgresTaskStore.describe(error))"])
                }
                warned = true
            }
            let wait = pause
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: wait) }
            pause = min(pause * 2, .seconds(10))
        }
    }

    package init(endpoint: PostgresEndpoint, signal: DispatchSignal, logger: Logger) {
        self.endpoint = endpoint
        self.signal = signal
        self.logger = logger
    }
}
