# Systerns lab daemon (Perl): a service recorded as a benign hard negative.
# The main thread serves files of one folder on 127.0.0.1 from an IO::Select
# loop (select with a timeout, the way most Perl servers wait), checks the
# folder on its timer, and hands changed files to a pool of ithreads that
# hash them with Digest::SHA; every step appends a log line.
#
# Usage: perl labd.pl DIR LOGFILE TICK_MS WORKERS PORT   (TICK_MS 0: no checks)
use strict;
use warnings;
use threads;
use Thread::Queue;
use Digest::SHA;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

my ($folder, $log_path, $tick_ms, $workers, $port) = @ARGV;
open(my $log, '>>', $log_path) or die "log: $!\n";
$log->autoflush(1);
my $jobs = Thread::Queue->new;

sub log_line { printf {$log} "%.6f %s\n", time, $_[0] }

for (1 .. $workers) {
    threads->create(sub {
        while (defined(my $path = $jobs->dequeue)) {
            my $sum = eval { Digest::SHA->new(256)->addfile($path)->hexdigest } // 'error';
            log_line("file=$path sum=" . substr($sum, 0, 16));
        }
    })->detach;
}

$SIG{PIPE} = 'IGNORE';  # a client gone early must not end the service
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                   Listen => 16, ReuseAddr => 1) or die "listen: $!\n";
my $sel = IO::Select->new($listen);
my %seen;
my $next_check = time + $tick_ms / 1000;
while (1) {
    my $wait = $tick_ms > 0 ? $next_check - time : 1.0;
    for my $fh ($sel->can_read($wait > 0 ? $wait : 0)) {
        my $conn = $listen->accept or next;
        # One request line, waited for at most 2 s: a silent client must not
        # stall the loop.
        my $line = IO::Select->new($conn)->can_read(2) ? (<$conn> // '') : '';
        my ($name) = $line =~ m{^GET /([^ ?]*)};
        $name = 'index.html' if !defined $name || $name eq '' || $name =~ m{\.\.|/};
        if (open(my $f, '<:raw', "$folder/$name")) {
            local $/;
            my $body = <$f> // '';
            print {$conn} "HTTP/1.0 200 OK\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
            log_line("get $name " . length $body);
        } else {
            print {$conn} "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        }
        close $conn;
    }
    next unless $tick_ms > 0 && time >= $next_check;
    $next_check = time + $tick_ms / 1000;
    opendir(my $d, $folder) or next;
    for my $e (readdir $d) {
        my $path = "$folder/$e";
        next unless -f $path;
        my $mtime = (stat _)[9];
        next if ($seen{$e} // -1) == $mtime;
        $seen{$e} = $mtime;
        $jobs->enqueue($path);
    }
    closedir $d;
    log_line('tick');
}
