import Foundation
import Logging
import PostgresNIO
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The task stores every store test runs against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// The shared PostgreSQL cluster of the test run: `I2V_TEST_DATABASE_URL` (a superuser's URL), as
/// `make test` sets it after starting a throwaway cluster with scripts/test-postgres.sh.
enum TestCluster {
    static let url = ProcessInfo.processInfo.environment["I2V_TEST_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
    /// `make test` sets this: there, a PostgreSQL case that cannot run is a failure, not a skip.
    static let strict = ProcessInfo.processInfo.environment["I2V_TEST_STRICT"] == "1"

    static let logger: Logger = {
        var logger = Logger(label: "i2v-test-postgres")
        logger.logLevel = .warning
        return logger
    }()

    /// The cluster to use; without one the current test case is skipped, or fails under `I2V_TEST_STRICT=1`.
    static func endpoint(sourceLocation: SourceLocation = #_sourceLocation) throws -> PostgresEndpoint {
        guard let url else {
            let reason: Comment = "I2V_TEST_DATABASE_URL is unset: no PostgreSQL cluster to test against (`make test` starts one with scripts/test-postgres.sh)"
            if strict {
                throw MissingCluster(description: "I2V_TEST_STRICT=1: \(reason)")
            }
            try Test.cancel(reason, sourceLocation: sourceLocation)
        }
        return try PostgresEndpoint(url: url)
    }

    /// The cluster's URL with another database in it, for a server process started by a test.
    static func url(database: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let cluster = try #require(url, sourceLocation: sourceLocation)
        var components = try #require(URLComponents(string: cluster), sourceLocation: sourceLocation)
        components.path = "/\(database)"
        return try #require(components.string, sourceLocation: sourceLocation)
    }

    struct MissingCluster: Error, CustomStringConvertible {
        var description: String
    }
}

/// A database of its own on the test cluster for the length of `body`, dropped afterwards, so tests stay
/// isolated while they run in parallel.
func withFreshPostgresDatabase<T>(_ body: (PostgresEndpoint) async throws -> T) async throws -> T {
    let cluster = try TestCluster.endpoint()
    // Identifiers cannot be bound; this one is made of lowercase hex only.
    let name = "i2v_test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    try await withPostgresConnection(cluster) { connection in
        try await connection.query("CREATE DATABASE \(unescaped: name)", logger: TestCluster.logger)
    }
    let result: Result<T, any Error>
    do {
        result = .success(try await body(cluster.with(database: name)))
    } catch {
        result = .failure(error)
    }
    try await withPostgresConnection(cluster) { connection in
        // FORCE: a pool that has not finished closing its connections must not keep the database alive.
        try await connection.query("DROP DATABASE IF EXISTS \(unescaped: name) WITH (FORCE)", logger: TestCluster.logger)
    }
    return try result.get()
}

/// A plain connection (no pool) to `endpoint` for the length of `body`.
func withPostgresConnection(_ endpoint: PostgresEndpoint, _ body: (PostgresConnection) async throws -> Void) async throws {
    let connection = try await PostgresConnection.connect(
        configuration: try endpoint.connectionConfiguration(),
        id: 0,
        logger: TestCluster.logger
    )
    do {
        try await body(connection)
    } catch {
        try? await connection.close()
        throw error
    }
    try await connection.close()
}

/// A migrated store whose pool runs for the length of `body`, as the application's service group runs it.
func withPostgresStore<T>(_ endpoint: PostgresEndpoint, _ body: (PostgresTaskStore) async throws -> T) async throws -> T {
    // A generous timeout: a test run shares two busy cores with builds and other suites.
    let store = try await PostgresTaskStore(endpoint: endpoint, maximumConnections: 10, timeout: .seconds(120), logger: TestCluster.logger)
    return try await withThrowingTaskGroup { group in
        group.addTask { await store.client.run() }
        defer { group.cancelAll() }
        return try await body(store)
    }
}

/// One backing database of a store kind: a SQLite file in a fresh directory, or a fresh PostgreSQL database.
/// Several stores opened on it at once stand for several processes or nodes sharing it.
struct StoreDatabase: Sendable {
    let kind: StoreKind
    let sqlitePath: String?
    /// Set for PostgreSQL.
    let endpoint: PostgresEndpoint?

    func withStore<T>(_ body: (any TaskStore) async throws -> T) async throws -> T {
        switch kind {
        case .sqlite:
            return try await body(try SQLiteTaskStore(path: sqlitePath!))
        case .postgres:
            return try await withPostgresStore(endpoint!) { try await body($0) }
        }
    }
}

func withStoreDatabase<T>(_ kind: StoreKind, _ body: (StoreDatabase) async throws -> T) async throws -> T {
    switch kind {
    case .sqlite:
        let directory = try TemporaryDirectory()
        let path = directory.url.appending(path: "tasks.sqlite").path
        return try await body(StoreDatabase(kind: kind, sqlitePath: path, endpoint: nil))
    case .postgres:
        return try await withFreshPostgresDatabase { endpoint in
            try await body(StoreDatabase(kind: kind, sqlitePath: nil, endpoint: endpoint))
        }
    }
}

/// A store of `kind` on a database of its own.
func withStore<T>(_ kind: StoreKind, _ body: (any TaskStore) async throws -> T) async throws -> T {
    try await withStoreDatabase(kind) { database in try await database.withStore(body) }
}

/// The queue port's implementations the store contract suite runs against: both stores, and the in-memory
/// queue that holds them to the same transitions.
enum QueueKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres
    case memory

    var testDescription: String { rawValue }
}

/// One backing database of a queue kind. For the in-memory queue every "open" is the same instance, as
/// every process sharing a database sees the same rows.
struct QueueDatabase: Sendable {
    let stores: StoreDatabase?
    let memory: InMemoryTaskQueue?

    func withQueue<T>(_ body: (any TaskQueue) async throws -> T) async throws -> T {
        if let memory { return try await body(memory) }
        return try await stores!.withStore { try await body($0) }
    }
}

func withQueueDatabase<T>(_ kind: QueueKind, _ body: (QueueDatabase) async throws -> T) async throws -> T {
    switch kind {
    case .sqlite: try await withStoreDatabase(.sqlite) { try await body(QueueDatabase(stores: $0, memory: nil)) }
    case .postgres: try await withStoreDatabase(.postgres) { try await body(QueueDatabase(stores: $0, memory: nil)) }
    case .memory: try await body(QueueDatabase(stores: nil, memory: InMemoryTaskQueue()))
    }
}

/// A queue of `kind` on a database of its own.
func withQueue<T>(_ kind: QueueKind, _ body: (any TaskQueue) async throws -> T) async throws -> T {
    try await withQueueDatabase(kind) { database in try await database.withQueue(body) }
}
