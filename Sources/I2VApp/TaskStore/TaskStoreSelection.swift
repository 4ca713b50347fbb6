import Foundation
import Logging
import ServiceLifecycle

/// The store `I2V_DATABASE_URL` selects: SQLite in the data dir unless it is a `postgres://` URL. A
/// PostgreSQL store comes with the service that runs its connection pool, which the application must run.
func makeTaskStore(configuration: ServiceConfiguration, logger: Logger) async throws -> (store: any TaskStore, service: (any Service)?) {
    guard let url = configuration.databaseURL, !url.hasPrefix("sqlite:") else {
        return (try SQLiteTaskStore(path: configuration.databaseFile.path), nil)
    }
    // The URL is a secret (it may hold a password): messages name the endpoint, never the URL.
    guard url.lowercased().hasPrefix("postgres://") || url.lowercased().hasPrefix("postgresql://") else {
        throw ConfigurationProblem(
            "I2V_DATABASE_URL must be a postgres://user:password@host:port/database URL (unset it to use SQLite in \(configuration.databaseFile.path))"
        )
    }
    do {
        let store = try await PostgresTaskStore(endpoint: try PostgresEndpoint(url: url), logger: logger)
        logger.info("task store: PostgreSQL", metadata: ["database": "\(store.endpoint)"])
        return (store, store.service)
    } catch let unavailable as PostgresStoreUnavailable {
        throw ConfigurationProblem(unavailable.description)
    }
}
