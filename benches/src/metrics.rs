//! The numbers netbench reports, and one measured sample of them.

/// One number the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Up1,
    Up4,
    Down1,
    Down4,
    In1,
    In4,
    ConnRate,
    ConnectP50,
    ConnectP99,
    ConnectMax,
    ConnRate8,
    ConnRate4x2,
    HostIpUp1,
    HostIpRate,
    RoundTripP50,
    RoundTripP99,
    KeptLoopback1,
    KeptLoopback8,
    KeptNested1,
    KeptNested8,
    AbClose1,
    AbClose8,
    AbKeepAlive8,
    RedisGet20,
    RedisPingReconnect1,
    RedisPingReconnect8,
    PgbenchConnect1,
    PgbenchConnect8,
    CrossHostUp1,
    CrossHostRate,
}

/// How a metric's samples read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Measured by the project's own probes (iperf3, labnet): a zero or
    /// missing figure means the path is broken.
    Probe,
    /// A real client (ab, redis-benchmark, pgbench): a failing client is a
    /// finding shown in the table, not a broken run.
    RealClient,
    /// Measured on the multi-host lab (`crosshost.rs`): node B of one host
    /// to node A's published port on another, for the host and rootless
    /// Docker's own stack (slirp4netns 65520) with and without netaccel.
    CrossHost,
}

impl Metric {
    pub const ALL: [Metric; 30] = [
        Metric::Up1,
        Metric::Up4,
        Metric::Down1,
        Metric::Down4,
        Metric::In1,
        Metric::In4,
        Metric::ConnRate,
        Metric::ConnectP50,
        Metric::ConnectP99,
        Metric::ConnectMax,
        Metric::ConnRate8,
        Metric::ConnRate4x2,
        Metric::HostIpUp1,
        Metric::HostIpRate,
        Metric::RoundTripP50,
        Metric::RoundTripP99,
        Metric::KeptLoopback1,
        Metric::KeptLoopback8,
        Metric::KeptNested1,
        Metric::KeptNested8,
        Metric::AbClose1,
        Metric::AbClose8,
        Metric::AbKeepAlive8,
        Metric::RedisGet20,
        Metric::RedisPingReconnect1,
        Metric::RedisPingReconnect8,
        Metric::PgbenchConnect1,
        Metric::PgbenchConnect8,
        Metric::CrossHostUp1,
        Metric::CrossHostRate,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Metric::AbClose1
            | Metric::AbClose8
            | Metric::AbKeepAlive8
            | Metric::RedisGet20
            | Metric::RedisPingReconnect1
            | Metric::RedisPingReconnect8
            | Metric::PgbenchConnect1
            | Metric::PgbenchConnect8 => Kind::RealClient,
            Metric::CrossHostUp1 | Metric::CrossHostRate => Kind::CrossHost,
            _ => Kind::Probe,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Metric::Up1 => "container_to_peer_1_stream_gbit_s",
            Metric::Up4 => "container_to_peer_4_streams_gbit_s",
            Metric::Down1 => "peer_to_container_1_stream_gbit_s",
            Metric::Down4 => "peer_to_container_4_streams_gbit_s",
            Metric::In1 => "host_to_published_port_1_stream_gbit_s",
            Metric::In4 => "host_to_published_port_4_streams_gbit_s",
            Metric::ConnRate => "connections_per_s",
            Metric::ConnectP50 => "connect_p50_us",
            Metric::ConnectP99 => "connect_p99_us",
            Metric::ConnectMax => "connect_max_us",
            Metric::ConnRate8 => "connections_per_s_1_thread_8_in_flight",
            Metric::ConnRate4x2 => "connections_per_s_4_threads_2_in_flight",
            Metric::HostIpUp1 => "container_to_host_own_ip_1_stream_gbit_s",
            Metric::HostIpRate => "connections_per_s_to_host_own_ip",
            Metric::RoundTripP50 => "request_response_p50_us",
            Metric::RoundTripP99 => "request_response_p99_us",
            Metric::KeptLoopback1 => "kept_loopback_connections_per_s_1_client",
            Metric::KeptLoopback8 => "kept_loopback_connections_per_s_4x2_clients",
            Metric::KeptNested1 => "kept_nested_netns_connections_per_s_1_client",
            Metric::KeptNested8 => "kept_nested_netns_connections_per_s_4x2_clients",
            Metric::AbClose1 => "ab_new_connection_c1_req_s",
            Metric::AbClose8 => "ab_new_connection_c8_req_s",
            Metric::AbKeepAlive8 => "ab_keepalive_c8_req_s",
            Metric::RedisGet20 => "redis_get_20_persistent_req_s",
            Metric::RedisPingReconnect1 => "redis_ping_reconnect_1_client_req_s",
            Metric::RedisPingReconnect8 => "redis_ping_reconnect_8_clients_4_threads_req_s",
            Metric::PgbenchConnect1 => "pgbench_connect_per_tx_1_client_tps",
            Metric::PgbenchConnect8 => "pgbench_connect_per_tx_8_clients_tps",
            Metric::CrossHostUp1 => "cross_host_node_to_published_port_1_stream_gbit_s",
            Metric::CrossHostRate => "cross_host_node_to_published_port_connections_per_s",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Up1 => "TCP container → peer, 1 stream (Gbit/s)",
            Metric::Up4 => "TCP container → peer, 4 streams (Gbit/s)",
            Metric::Down1 => "TCP peer → container, 1 stream (Gbit/s)",
            Metric::Down4 => "TCP peer → container, 4 streams (Gbit/s)",
            Metric::In1 => "TCP host → published port, 1 stream (Gbit/s)",
            Metric::In4 => "TCP host → published port, 4 streams (Gbit/s)",
            Metric::ConnRate => "short connections/s to the peer, 1 client",
            Metric::ConnectP50 => "connect latency p50 (µs)",
            Metric::ConnectP99 => "connect latency p99 (µs)",
            Metric::ConnectMax => "connect latency max (µs)",
            Metric::ConnRate8 => "short connections/s, 1 thread × 8 in flight",
            Metric::ConnRate4x2 => "short connections/s, 4 threads × 2 in flight",
            Metric::HostIpUp1 => "TCP container → the host's own IP, 1 stream (Gbit/s)",
            Metric::HostIpRate => "short connections/s to the host's own IP",
            Metric::RoundTripP50 => "64-byte request/response p50 (µs)",
            Metric::RoundTripP99 => "64-byte request/response p99 (µs)",
            Metric::KeptLoopback1 => "kept: loopback in the container, conn/s, 1 client",
            Metric::KeptLoopback8 => "kept: loopback in the container, conn/s, 4×2",
            Metric::KeptNested1 => "kept: loopback in a nested netns (a pod), conn/s, 1 client",
            Metric::KeptNested8 => "kept: loopback in a nested netns (a pod), conn/s, 4×2",
            Metric::AbClose1 => "ab → nginx, new connection per request, -c 1 (req/s)",
            Metric::AbClose8 => "ab → nginx, new connection per request, -c 8 (req/s)",
            Metric::AbKeepAlive8 => "ab → nginx, keep-alive, -c 8 (req/s)",
            Metric::RedisGet20 => "redis-benchmark GET, 20 persistent clients (req/s)",
            Metric::RedisPingReconnect1 => "redis-benchmark PING, reconnect per request, 1 client (req/s)",
            Metric::RedisPingReconnect8 => {
                "redis-benchmark PING, reconnect per request, 8 clients on 4 threads (req/s)"
            }
            Metric::PgbenchConnect1 => "pgbench -C (connection per transaction), 1 client (tps)",
            Metric::PgbenchConnect8 => "pgbench -C, 8 clients on 4 threads (tps)",
            Metric::CrossHostUp1 => "cross-host: TCP node B → node A's published port, 1 stream (Gbit/s)",
            Metric::CrossHostRate => "cross-host: short connections/s node B → node A's published port",
        }
    }
}

/// One measurement of one metric on one path in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: Metric,
    pub value: f64,
    /// Failures or stalls the measurement saw ("3 failed requests", "1
    /// connect ≥ 100 ms"): shown against the figure, never averaged away.
    pub problem: Option<String>,
}

impl Sample {
    pub fn clean(metric: Metric, value: f64) -> Self {
        Self {
            metric,
            value,
            problem: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_keys_and_labels_are_unique() {
        let keys: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.key()).collect();
        assert_eq!(keys.len(), Metric::ALL.len());
        let labels: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.label()).collect();
        assert_eq!(labels.len(), Metric::ALL.len());
    }
}
