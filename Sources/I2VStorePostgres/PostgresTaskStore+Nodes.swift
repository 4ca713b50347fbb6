import Foundation
import I2VCore
import PostgresNIO

extension PostgresTaskStore {
    public func recordHeartbeat(_ node: WorkerNode) async throws {
        let models = try WorkerNodeColumns.encodeModels(node.models)
        let heartbeat = node.heartbeatAt.timeIntervalSince1970
        try await transaction { connection in
            try await connection.query(
                """
                INSERT INTO nodes (id, models, slots, running, free_memory_bytes, bytes_per_token, started_at, heartbeat_at, devices)
                VALUES (\(node.id), \(models), \(node.slots), \(node.running), \(node.freeMemoryBytes),
                    \(node.bytesPerToken), \(node.startedAt.timeIntervalSince1970), \(heartbeat),
                    \(WorkerNodeColumns.encodeDevices(node.devices)))
                ON CONFLICT (id) DO UPDATE SET models = excluded.models, slots = excluded.slots,
                    running = excluded.running, free_memory_bytes = excluded.free_memory_bytes,
                    bytes_per_token = excluded.bytes_per_token, started_at = excluded.started_at,
                    heartbeat_at = excluded.heartbeat_at, devices = excluded.devices
                """,
                logger: logger
            )
            try await connection.query(
                "DELETE FROM nodes WHERE heartbeat_at < \(heartbeat - WorkerNodeColumns.staleAfter)",
                logger: logger
            )
        }
    }

    public func workerNodes() async throws -> [WorkerNode] {
        try await withDeadline {
            let rows = try await client.query(
                """
                SELECT id, models, slots, running, free_memory_bytes, bytes_per_token, started_at, heartbeat_at, devices
                FROM nodes ORDER BY heartbeat_at DESC, id
                """,
                logger: logger
            )
            var nodes: [WorkerNode] = []
            for try await (id, models, slots, running, free, perToken, started, heartbeat, devices)
                in rows.decode((String, String, Int, Int, Int?, Int?, Double, Double, String?).self)
            {
                nodes.append(
                    WorkerNode(
                        id: id,
                        models: try WorkerNodeColumns.decodeModels(models),
                        slots: slots,
                        running: running,
                        freeMemoryBytes: free,
                        bytesPerToken: perToken,
                        startedAt: Date(timeIntervalSince1970: started),
                        heartbeatAt: Date(timeIntervalSince1970: heartbeat),
                        devices: WorkerNodeColumns.decodeDevices(devices)
                    ))
            }
            return nodes
        }
    }

    public func removeWorkerNode(id: String) async throws {
        try await withDeadline {
            try await client.query("DELETE FROM nodes WHERE id = \(id)", logger: logger)
        }
    }
}
