import Foundation
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VStorePostgres
import I2VStoreSQLite
import I2VWebhooks
import Logging
import ServiceLifecycle

/// The store `I2V_DATABASE_URL` selects: SQLite in the data dir unless it is a `postgres://` URL. A
/// PostgreSQL store comes with the services the application must run: its connection pool and, where
/// `notify` is given, the listener that wakes the dispatcher when another node queues or cancels a task.
func makeTaskStore(
    configuration: ServiceConfiguration,
    notify: DispatchSignal?,
    logger: Logger
) async throws -> (store: any TaskStore & TaskListing & WebhookOutbox, services: [any Service]) {
    guard let url = configuration.databaseURL, !url.hasPrefix("sqlite:") else {
        return (try SQLiteTaskStore(path: configuration.databaseFile.path), [])
    }
    // The URL is a secret (it may hold a password): messages name the endpoint, never the URL.
    guard url.lowercased().hasPrefix("postgres://") || url.lowercased().hasPrefix("postgresql://") else {
        throw ConfigurationProblem(
            "I2V_DATABASE_URL must be a postgres://user:password@host:port/database URL (unset it to use SQLite in \(configuration.databaseFile.path))"
        )
    }
    do {
        let store = try await PostgresTaskStore(
            endpoint: try PostgresEndpoint(url: url),
            timeout: configuration.databaseTimeout,
            logger: logger
        )
        logger.info("task store: PostgreSQL", metadata: ["database": "\(store.endpoint)"])
        var services: [any Service] = [store.service]
        if let notify { services.append(PostgresNotifications(endpoint: store.endpoint, signal: notify, logger: logger)) }
        return (store, services)
    } catch let unavailable as PostgresStoreUnavailable {
        throw ConfigurationProblem(unavailable.description)
    }
}
