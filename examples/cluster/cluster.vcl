vcl 4.1;
# A self-routing cluster: every node takes client traffic and runs this same VCL, started with its
# own name as identity (`cacheserver -i node1 ...`, like varnishd's -i). For each URL the shard
# director names one owner node; the owner alone caches the object and goes to the origin, the
# others pass the request on to it. A node whose peers' probes fail is taken out of the ring and its
# share moves to the next node on the ring (only its share); when it is healthy again it gets it back.
# Before the probes notice, a pass to it that fails is retried once on that next node.
#
# This is a template: run.py fills the $$name places (Python string.Template) with the nodes, the origin
# and the probe timings. The nodes' backend names must be their identities (-i).

import directors;
import std;

# Every node probes every node, itself included: a node that cannot answer its own probe is out of
# its own ring too, so all nodes agree on who owns what.
probe peer {
    .url = "/.cluster/health";
    .interval = ${probe_interval};
    .timeout = ${probe_timeout};
    .window = ${probe_window};
    .threshold = ${probe_threshold};
    .initial = ${probe_threshold};
}

backend origin {
    .host = "${origin_host}";
    .port = "${origin_port}";
}

${node_backends}

# Who may send a request as a peer (with X-Cluster-Hop), and who may invalidate (PURGE, BAN): the
# peers must be invalidators too, as a PURGE reaches the owner from the node that took it.
acl cluster_peers {
${peer_acl}
}

acl invalidators {
${invalidator_acl}
}

sub vcl_init {
    new cluster = directors.shard();
${add_backends}
    cluster.reconfigure();
}

sub vcl_recv {
    if (req.url == "/.cluster/health") {
        return (synth(200, "OK"));
    }
    if ((req.method == "PURGE" || req.method == "BAN") && client.ip !~ invalidators) {
        # checked where the client came in: a PURGE reaches the owner from a peer
        return (synth(405, "Not allowed"));
    }
    if (req.method == "BAN") {
        # bans are per node: send the same BAN to every node (README, "Running a cluster")
        if (!req.http.X-Ban-Url) {
            return (synth(400, "X-Ban-Url missing"));
        }
        if (std.ban("obj.http.X-Url ~ " + req.http.X-Ban-Url)) {
            return (synth(200, "Banned"));
        }
        return (synth(400, std.ban_error()));
    }

    if (req.http.X-Cluster-Hop && client.ip ~ cluster_peers) {
        # a peer sent it here because this node owns it: never route again (no loops even when
        # two nodes briefly disagree about health)
        set req.backend_hint = origin;
    } else {
        unset req.http.X-Cluster-Hop;
        set req.backend_hint = cluster.backend(by=URL);
        set req.http.X-Cluster-Owner = req.backend_hint;
        if (req.backend_hint && req.http.X-Cluster-Owner != server.identity) {
            # another node owns it: pass (never cache here) to the owner, PURGE included
            set req.http.X-Cluster-Hop = server.identity;
            return (pass);
        }
        # this node owns it (or no node is healthy): the origin
        set req.backend_hint = origin;
    }
    unset req.http.X-Cluster-Owner;

    if (req.method == "PURGE") {
        return (purge);
    }
}

sub vcl_backend_fetch {
    if (bereq.backend == origin) {
        unset bereq.http.X-Cluster-Hop;
    } else if (bereq.retries > 0) {
        # the owner did not answer and its probes have not noticed yet: the next node on the ring
        set bereq.backend = cluster.backend(by=URL, alt=bereq.retries);
    }
}

sub vcl_backend_error {
    if (bereq.backend != origin && bereq.retries == 0) {
        return (retry);
    }
}

sub vcl_backend_response {
    if (bereq.backend == origin) {
        # for bans the lurker can test, and to show which node went to the origin
        set beresp.http.X-Url = bereq.url;
        set beresp.http.X-Cluster-Fetched-By = server.identity;
    }
}

sub vcl_deliver {
    if (req.backend_hint == origin) {
        # the owner's answer: served from its cache (HIT) or fetched from the origin (MISS)
        unset resp.http.X-Url;
        set resp.http.X-Cluster-Owner = server.identity;
        if (obj.hits > 0) {
            set resp.http.X-Cache = "HIT";
        } else {
            set resp.http.X-Cache = "MISS";
        }
    }
    if (!req.http.X-Cluster-Hop || req.backend_hint != origin) {
        # the node the client talked to
        set resp.http.X-Cluster-Node = server.identity;
    }
}

sub vcl_synth {
    if (req.method == "PURGE") {
        set resp.http.X-Cluster-Owner = server.identity;
    }
}
