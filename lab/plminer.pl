# Systerns lab miner (Perl): a fourth training miner, in a second interpreted
# runtime. Perl ithreads run a memory-hard loop (fill a scratchpad with SHA-2
# output from Digest::SHA, then mix it at data-dependent offsets) and the main
# thread speaks stratum JSON-RPC to the lab's fake pool on 127.0.0.1. It only
# ever runs inside its own network namespace.
#
# Usage: perl plminer.pl HOST:PORT USER THREADS MEM_KIB SHARE_BITS ALGO [TITLE]
use strict;
use warnings;
use threads;
use threads::shared;
use Thread::Queue;
use Digest::SHA qw(sha1 sha256 sha512);
use IO::Socket::INET;
use IO::Select;
use JSON::PP;

my ($host_port, $user, $threads, $mem_kib, $share_bits, $algo, $title) = @ARGV;
$0 = $title if defined $title && length $title;
my %digest = (sha1 => \&sha1, sha256 => \&sha256, sha512 => \&sha512);
my $hash = $digest{$algo} or die "unknown algorithm $algo\n";
(my $addr = $host_port) =~ s{^stratum\+tcp://}{};

my $job_id :shared = '';
my $job_blob :shared = '';
my $found = Thread::Queue->new;

sub hash_loop {
    my ($first, $step) = @_;
    my $pad_len = $mem_kib * 1024;
    my ($nonce, $seen) = ($first, '');
    while (1) {
        my ($jid, $blob) = do { lock($job_id); ($job_id, $job_blob) };
        if ($jid eq '') { select(undef, undef, undef, 0.05); next }
        ($nonce, $seen) = ($first, $jid) if $jid ne $seen;
        my $h = $hash->($blob . $nonce);
        my $pad = '';
        while (length($pad) + length($h) <= $pad_len) { $pad .= $h; $h = $hash->($h) }
        for (1 .. 128) {
            my $off = (unpack('V', $h) % ($pad_len - 64)) & ~7;
            substr($pad, $off, 32) = substr($pad, $off, 32) ^ substr($h, 0, 32);
            $h = $hash->(substr($pad, $off, 64));
        }
        $found->enqueue("$jid:" . sprintf('%x', $nonce))
            if (unpack('N', $h) >> (32 - $share_bits)) == 0;
        $nonce += $step;
    }
}

my $sock = IO::Socket::INET->new(PeerAddr => $addr, Proto => 'tcp') or exit 3;
$sock->autoflush(1);
my $id = 0;
sub send_msg { print {$sock} encode_json({id => ++$id, method => $_[0], params => $_[1]}) . "\n" }
send_msg('mining.subscribe', ['lab-plminer/0.1']);
send_msg('mining.authorize', [$user, 'x']);
threads->create(\&hash_loop, $_, $threads)->detach for 0 .. $threads - 1;

my $sel = IO::Select->new($sock);
my $buf = '';
while (1) {
    while (defined(my $share = $found->dequeue_nb)) {
        my ($jid, $nonce) = split /:/, $share, 2;
        send_msg('mining.submit', [$user, $jid, $nonce]);
    }
    next unless $sel->can_read(0.2);
    my $n = sysread($sock, $buf, 65536, length $buf);
    exit 0 unless $n;
    while ($buf =~ s/^([^\n]*)\n//) {
        my $msg = eval { decode_json($1) } or next;
        next unless ($msg->{method} // '') eq 'mining.notify';
        lock($job_id);
        ($job_id, $job_blob) = ($msg->{params}[0], pack('H*', $msg->{params}[1]));
    }
}
